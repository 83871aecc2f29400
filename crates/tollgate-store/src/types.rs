//! The records the store reads and writes.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Rate limits attached to a team or a key. `None` means "no limit at this level".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Tokens per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpd: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u64>,
    /// Burst allowance on top of `rpm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm_burst: Option<u64>,
    /// Burst allowance on top of `tpm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_burst: Option<u64>,
    /// `fail_open` or `fail_closed` while the shared limits backend is away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
}

/// Spending limits attached to a team or a key, in US dollars.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Spend allowed per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    /// Spend allowed per UTC month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
    /// Percentage (0..=100) of a budget at which to warn before refusing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_pct: Option<f64>,
}

/// A team: a named group of keys sharing limits, budget and a model allow-list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Team {
    /// Caller-chosen slug, unique (e.g. `research`).
    pub id: String,
    /// Free text.
    pub description: Option<String>,
    /// Models the team may use; `None` = all.
    pub models: Option<Vec<String>>,
    /// Team-wide rate limits.
    pub limits: LimitSpec,
    /// Team-wide budget.
    pub budget: BudgetSpec,
    /// Arbitrary JSON object.
    pub metadata: serde_json::Value,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Last update time, unix milliseconds.
    pub updated_at: i64,
    /// `state_version` value of the last write to this team.
    pub version: i64,
}

/// What [`crate::Store::create_team`] needs.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTeam {
    /// Caller-chosen slug, unique.
    pub id: String,
    /// Free text.
    pub description: Option<String>,
    /// Models the team may use; `None` = all.
    pub models: Option<Vec<String>>,
    /// Team-wide rate limits.
    pub limits: LimitSpec,
    /// Team-wide budget.
    pub budget: BudgetSpec,
    /// Arbitrary JSON object (`null` is stored as `{}`).
    pub metadata: serde_json::Value,
}

/// A partial update of a team: `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TeamPatch {
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
    /// `Some(None)` allows every model.
    pub models: Option<Option<Vec<String>>>,
    /// Replaces the limits whole.
    pub limits: Option<LimitSpec>,
    /// Replaces the budget whole.
    pub budget: Option<BudgetSpec>,
    /// Replaces the metadata whole.
    pub metadata: Option<serde_json::Value>,
}

/// A managed client key. The secret itself is never stored, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Unique id.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// SHA-256 of the secret, 64 lowercase hex digits. Unique.
    pub hash: String,
    /// The first characters of the secret, for display.
    pub prefix: String,
    /// The team the key belongs to, if any.
    pub team_id: Option<String>,
    /// Models the key may use; `None` = all (within the team's list).
    pub models: Option<Vec<String>>,
    /// Per-key rate limits.
    pub limits: LimitSpec,
    /// Per-key budget.
    pub budget: BudgetSpec,
    /// A disabled key is refused.
    pub disabled: bool,
    /// Expiry, unix seconds.
    pub expires_at: Option<i64>,
    /// Arbitrary JSON object.
    pub metadata: serde_json::Value,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Last update time, unix milliseconds.
    pub updated_at: i64,
    /// Last rotation time, unix milliseconds.
    pub rotated_at: Option<i64>,
    /// `state_version` value of the last write to this key.
    pub version: i64,
    /// Tombstone: the key was deleted (only [`crate::Store::changed_keys`] returns these).
    pub deleted: bool,
}

/// What [`crate::Store::create_key`] needs.
#[derive(Clone, Debug, PartialEq)]
pub struct NewKey {
    /// Unique id.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// SHA-256 of the secret, 64 lowercase hex digits. Unique.
    pub hash: String,
    /// The first characters of the secret, for display.
    pub prefix: String,
    /// The team the key belongs to; must name an existing team.
    pub team_id: Option<String>,
    /// Models the key may use; `None` = all.
    pub models: Option<Vec<String>>,
    /// Per-key rate limits.
    pub limits: LimitSpec,
    /// Per-key budget.
    pub budget: BudgetSpec,
    /// A disabled key is refused.
    pub disabled: bool,
    /// Expiry, unix seconds.
    pub expires_at: Option<i64>,
    /// Arbitrary JSON object (`null` is stored as `{}`).
    pub metadata: serde_json::Value,
}

/// A partial update of a key: `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// `Some(None)` detaches the key from its team.
    pub team_id: Option<Option<String>>,
    /// `Some(None)` allows every model.
    pub models: Option<Option<Vec<String>>>,
    /// Replaces the limits whole.
    pub limits: Option<LimitSpec>,
    /// Replaces the budget whole.
    pub budget: Option<BudgetSpec>,
    /// Enables or disables the key.
    pub disabled: Option<bool>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<i64>>,
    /// Replaces the metadata whole.
    pub metadata: Option<serde_json::Value>,
}

/// One request in the usage ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// When the request ended, unix milliseconds.
    pub ts_ms: i64,
    /// Unique request id; inserting it twice is a no-op.
    pub request_id: String,
    /// The client key's id.
    pub key_id: String,
    /// The client key's name at the time.
    pub key_name: String,
    /// The key's team at the time.
    pub team_id: Option<String>,
    /// Model name.
    pub model: String,
    /// Provider name.
    pub provider: String,
    /// Operation (e.g. `chat`, `embeddings`).
    pub operation: String,
    /// HTTP status returned to the client; 0 when the request never got one.
    pub status: u16,
    /// Whether the response was streamed.
    pub stream: bool,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from a cache.
    pub cached_tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Total latency in milliseconds.
    pub latency_ms: f64,
    /// Time to first token in milliseconds (streams).
    pub ttft_ms: Option<f64>,
    /// Error text, if the request failed.
    pub error: Option<String>,
    /// The prompt API the request was made through, as `name/version` (e.g.
    /// `sentiment/v1`); `None` for plain requests.
    #[serde(default)]
    pub api: Option<String>,
}

/// Which records a usage query covers, and how they are grouped.
#[derive(Clone, Debug, Default)]
pub struct UsageQuery {
    /// Start, unix milliseconds, inclusive.
    pub from_ms: i64,
    /// End, unix milliseconds, exclusive.
    pub to_ms: i64,
    /// Only this key.
    pub key_id: Option<String>,
    /// Only this team.
    pub team_id: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this provider.
    pub provider: Option<String>,
    /// Only requests made through this prompt API (`name/version`, exact match).
    pub api: Option<String>,
    /// One row per distinct value of this column; `None` = one row overall.
    pub group_by: Option<GroupBy>,
}

/// A column usage can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// By `key_id`.
    Key,
    /// By `team_id` (records without a team form the `None` group).
    Team,
    /// By `model`.
    Model,
    /// By `provider`.
    Provider,
    /// By `api` (`name/version`; requests not made through a prompt API form the
    /// `None` group).
    Api,
}

impl GroupBy {
    /// The name used in APIs: `key`, `team`, `model`, `provider`, `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Api => "api",
        }
    }

    /// The ledger column grouped on.
    pub(crate) fn column(self) -> &'static str {
        match self {
            GroupBy::Key => "key_id",
            GroupBy::Team => "team_id",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Api => "api",
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of [`GroupBy::from_str`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown group_by {0:?} (expected key, team, model, provider or api)")]
pub struct ParseGroupByError(pub String);

impl FromStr for GroupBy {
    type Err = ParseGroupByError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "key" => Ok(GroupBy::Key),
            "team" => Ok(GroupBy::Team),
            "model" => Ok(GroupBy::Model),
            "provider" => Ok(GroupBy::Provider),
            "api" => Ok(GroupBy::Api),
            other => Err(ParseGroupByError(other.to_string())),
        }
    }
}

/// Aggregated usage: one group, or one (bucket, group) of a series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageRow {
    /// Start of the bucket, unix milliseconds (series only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_ms: Option<i64>,
    /// The group's value (`None` without `group_by`, or for records without a team).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Number of requests.
    pub requests: i64,
    /// Requests with status >= 400 or status 0.
    pub errors: i64,
    /// Summed prompt tokens.
    pub input_tokens: i64,
    /// Summed completion tokens.
    pub output_tokens: i64,
    /// Summed cached prompt tokens.
    pub cached_tokens: i64,
    /// Summed cost in US dollars.
    pub cost_usd: f64,
}

/// One bin of [`crate::Store::limit_usage`].
#[derive(Clone, Debug, PartialEq)]
pub struct LimitUsage {
    /// Key id.
    pub key_id: String,
    /// Team id, if the key had one.
    pub team_id: Option<String>,
    /// Public model name.
    pub model: String,
    /// How many bins back (0: the newest).
    pub bin: usize,
    /// Requests admitted.
    pub requests: u64,
    /// Tokens used (input + output).
    pub tokens: u64,
}

/// Summed cost since some instant, per key and per team.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spend {
    /// Cost per key id.
    pub by_key: HashMap<String, f64>,
    /// Cost per team id (records without a team are not counted here).
    pub by_team: HashMap<String, f64>,
}

/// Deserialises a present field (even `null`) as `Some(..)`, so that with
/// `#[serde(default)]` a missing field is `None` and `null` is `Some(None)`.
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// One version of a prompt API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiRecord {
    /// The API's name (e.g. `sentiment`), shared by all its versions.
    pub name: String,
    /// The version (e.g. `v1`); unique per name.
    pub version: String,
    /// The owning team's id.
    pub team_id: String,
    /// `draft`, `published`, `deprecated` or `retired`.
    pub status: String,
    /// The definition, a JSON object (opaque to the store).
    pub spec: serde_json::Value,
    /// Free text.
    pub description: Option<String>,
    /// Whether subscription requests are approved without review.
    pub auto_approve: bool,
    /// When the version was deprecated, unix milliseconds.
    pub deprecated_at: Option<i64>,
    /// When the version stops serving, unix milliseconds.
    pub sunset_at: Option<i64>,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Last update time, unix milliseconds.
    pub updated_at: i64,
    /// `state_version` value of the last write to this row.
    pub row_version: i64,
}

/// What [`crate::Store::create_api`] needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewApi {
    /// The API's name.
    pub name: String,
    /// The version; `(name, version)` must be new.
    pub version: String,
    /// The owning team's id.
    pub team_id: String,
    /// `draft`, `published`, `deprecated` or `retired`.
    pub status: String,
    /// The definition, a JSON object (opaque to the store).
    pub spec: serde_json::Value,
    /// Free text.
    pub description: Option<String>,
    /// Whether subscription requests are approved without review.
    pub auto_approve: bool,
    /// When it was deprecated (for a version created deprecated), unix milliseconds.
    pub deprecated_at: Option<i64>,
    /// When it stops serving, unix milliseconds.
    pub sunset_at: Option<i64>,
}

/// A partial update of an API version: `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiPatch {
    /// Replaces the definition whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// `Some(None)` clears the description.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "double_option"
    )]
    pub description: Option<Option<String>>,
    /// Turns auto-approval of subscriptions on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_approve: Option<bool>,
}

/// A status transition of an API version ([`crate::Store::set_api_status`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The new status: `draft`, `published`, `deprecated` or `retired`.
    pub to: String,
    /// The statuses the change is allowed from; any other current status is a
    /// [`crate::StoreError::Conflict`].
    pub allowed_from: Vec<String>,
    /// Sets `deprecated_at` when given (left as it is otherwise).
    #[serde(default)]
    pub deprecated_at: Option<i64>,
    /// Sets `sunset_at` when given (left as it is otherwise).
    #[serde(default)]
    pub sunset_at: Option<i64>,
}

/// A team's subscription to an API (by name: it covers every version).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// `sub_` followed by 24 random hex digits.
    pub id: String,
    /// The API's name.
    pub api: String,
    /// The subscribing team's id; one subscription per (api, team).
    pub team_id: String,
    /// `pending`, `approved`, `rejected` or `revoked`.
    pub status: String,
    /// Who made the (latest) request.
    pub requested_by: String,
    /// Who made the latest decision (`auto-approval` for automatic approvals).
    pub decided_by: Option<String>,
    /// The reason given with the latest decision.
    pub reason: Option<String>,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Last update time, unix milliseconds.
    pub updated_at: i64,
    /// `state_version` value of the last write to this row.
    pub row_version: i64,
}

/// One entry of the API audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiEvent {
    /// Increasing id: the log's order.
    pub id: i64,
    /// When it happened, unix milliseconds.
    pub at_ms: i64,
    /// Who did it.
    pub actor: String,
    /// The API's name.
    pub api: String,
    /// The version concerned, if the event is about one version.
    pub api_version: Option<String>,
    /// What happened: `created`, `updated`, `status`, `subscription_requested`,
    /// `subscription_approved`, `subscription_rejected`, `subscription_revoked`.
    pub action: String,
    /// Details, a JSON object.
    pub detail: serde_json::Value,
}
