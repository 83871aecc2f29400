//! Every API version the gateway serves and every subscription, as one
//! immutable value the data plane swaps whole: resolving a path to a
//! version and deciding who may call it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use tollgate_schema::{ApiError, ErrorType};

use crate::api::Api;
use crate::spec::Status;

/// A subscription's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubStatus {
    /// Waiting for a decision.
    Pending,
    /// Calls allowed.
    Approved,
    /// Refused.
    Rejected,
    /// Withdrawn after approval.
    Revoked,
}

impl SubStatus {
    /// `pending`, `approved`, `rejected` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            SubStatus::Pending => "pending",
            SubStatus::Approved => "approved",
            SubStatus::Rejected => "rejected",
            SubStatus::Revoked => "revoked",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<SubStatus> {
        match s {
            "pending" => Some(SubStatus::Pending),
            "approved" => Some(SubStatus::Approved),
            "rejected" => Some(SubStatus::Rejected),
            "revoked" => Some(SubStatus::Revoked),
            _ => None,
        }
    }

    /// The states a subscription may be decided from, for each decision.
    pub fn allowed_from(to: SubStatus) -> &'static [SubStatus] {
        match to {
            SubStatus::Pending => &[SubStatus::Rejected, SubStatus::Revoked],
            SubStatus::Approved => &[SubStatus::Pending, SubStatus::Rejected],
            SubStatus::Rejected => &[SubStatus::Pending],
            SubStatus::Revoked => &[SubStatus::Approved],
        }
    }
}

/// One team's subscription to one API (every version of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionView {
    /// `sub_…`, or `config` for subscribers listed in the config file.
    pub id: String,
    /// API name.
    pub api: String,
    /// Subscribing team.
    pub team: String,
    /// State.
    pub status: SubStatus,
}

/// How a caller relates to an API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// The caller's team owns it.
    Owner,
    /// An approved subscription.
    Subscribed,
    /// A subscription awaits approval.
    Pending,
    /// No (approved) subscription.
    SubscriptionRequired,
}

impl Access {
    /// Whether a call is allowed (lifecycle permitting).
    pub fn may_call(self) -> bool {
        matches!(self, Access::Owner | Access::Subscribed)
    }
}

/// The APIs and subscriptions in force.
#[derive(Debug, Default)]
pub struct Catalog {
    apis: BTreeMap<String, BTreeMap<u32, Arc<Api>>>,
    subs: HashMap<(String, String), SubscriptionView>,
}

impl Catalog {
    /// A catalog of `apis` (a later duplicate of a name and version replaces an
    /// earlier one) and `subs`.
    pub fn new(apis: Vec<Api>, subs: Vec<SubscriptionView>) -> Catalog {
        let mut plain: BTreeMap<String, BTreeMap<u32, Api>> = BTreeMap::new();
        for a in apis {
            plain
                .entry(a.spec.name.clone())
                .or_default()
                .insert(a.version_number(), a);
        }
        let mut by_name: BTreeMap<String, BTreeMap<u32, Arc<Api>>> = BTreeMap::new();
        for (name, versions) in plain {
            let mut successor: Option<String> = None;
            let mut out = BTreeMap::new();
            for (n, mut a) in versions.into_iter().rev() {
                a.successor_path.clone_from(&successor);
                if a.state.status == Status::Published && successor.is_none() {
                    successor = Some(a.path.clone());
                }
                out.insert(n, Arc::new(a));
            }
            by_name.insert(name, out);
        }
        let mut map = HashMap::with_capacity(subs.len());
        for s in subs {
            map.insert((s.api.clone(), s.team.clone()), s);
        }
        Catalog {
            apis: by_name,
            subs: map,
        }
    }

    /// Every version of every API, by name then version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Api>> {
        self.apis.values().flat_map(|v| v.values())
    }

    /// One version, if it exists.
    pub fn get(&self, name: &str, version: &str) -> Option<&Arc<Api>> {
        let n = crate::spec::version_number(version)?;
        self.apis.get(name)?.get(&n)
    }

    /// The versions of `name`, oldest first.
    pub fn versions(&self, name: &str) -> impl Iterator<Item = &Arc<Api>> {
        self.apis.get(name).into_iter().flat_map(|v| v.values())
    }

    /// `POST /apis/{name}[/{version}]` → the version. Without a version: the
    /// newest published (or else deprecated) one, or else the newest of all.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<&Arc<Api>, ApiError> {
        let versions = self.apis.get(name).ok_or_else(|| {
            ApiError::new(
                404,
                ErrorType::InvalidRequest,
                format!("There is no API `{name}`. `GET /catalog` lists the APIs you may call."),
            )
            .with_code("api_not_found")
        })?;
        match version {
            Some(v) => crate::spec::version_number(v)
                .and_then(|n| versions.get(&n))
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        versions.values().map(|a| a.spec.version.as_str()).collect();
                    ApiError::new(
                        404,
                        ErrorType::InvalidRequest,
                        format!(
                            "API `{name}` has no version `{v}` (versions: {}).",
                            known.join(", ")
                        ),
                    )
                    .with_code("api_version_not_found")
                }),
            None => {
                let newest = |s: Status| versions.values().rev().find(|a| a.state.status == s);
                newest(Status::Published)
                    .or_else(|| newest(Status::Deprecated))
                    .or_else(|| versions.values().next_back())
                    .ok_or_else(|| ApiError::internal("an API without versions"))
            }
        }
    }

    /// How a caller of `team` relates to API `name`.
    pub fn access(&self, api: &Api, team: Option<&str>) -> Access {
        let Some(team) = team else {
            return Access::SubscriptionRequired;
        };
        if api.spec.team == team {
            return Access::Owner;
        }
        match self
            .subs
            .get(&(api.spec.name.clone(), team.to_string()))
            .map(|s| s.status)
        {
            Some(SubStatus::Approved) => Access::Subscribed,
            Some(SubStatus::Pending) => Access::Pending,
            _ => Access::SubscriptionRequired,
        }
    }

    /// The subscription of `team` to `api`, if any.
    pub fn subscription(&self, api: &str, team: &str) -> Option<&SubscriptionView> {
        self.subs.get(&(api.to_string(), team.to_string()))
    }

    /// Whether a caller of `team` may call `api` now: lifecycle, then
    /// ownership or subscription. The error says what is missing.
    pub fn authorize(&self, api: &Api, team: Option<&str>) -> Result<Access, ApiError> {
        let access = self.access(api, team);
        match api.state.status {
            Status::Retired => {
                let successor = self
                    .successor(api)
                    .map(|s| format!(" Use `{}` instead.", s.path))
                    .unwrap_or_default();
                return Err(ApiError::new(
                    410,
                    ErrorType::InvalidRequest,
                    format!("API `{}` has been retired.{successor}", api.id),
                )
                .with_code("api_retired"));
            }
            Status::Draft if access != Access::Owner => {
                return Err(ApiError::new(
                    403,
                    ErrorType::Permission,
                    format!(
                        "API `{}` is a draft: only its owning team `{}` may call it until it is published.",
                        api.id, api.spec.team
                    ),
                )
                .with_code("api_not_published"));
            }
            _ => {}
        }
        match access {
            Access::Owner | Access::Subscribed => Ok(access),
            Access::Pending => Err(ApiError::new(
                403,
                ErrorType::Permission,
                format!(
                    "The subscription of team `{}` to API `{}` is pending approval by team `{}`.",
                    team.unwrap_or_default(),
                    api.spec.name,
                    api.spec.team
                ),
            )
            .with_param(api.spec.name.clone())
            .with_code("subscription_pending")),
            Access::SubscriptionRequired => Err(ApiError::new(
                403,
                ErrorType::Permission,
                match team {
                    Some(t) => format!(
                        "Team `{t}` has no subscription to API `{}` (owned by team `{}`). Request one with `POST /catalog/{}/subscription`.",
                        api.spec.name, api.spec.team, api.spec.name
                    ),
                    None => format!(
                        "API `{}` belongs to team `{}`: calling it needs a subscription, and only a key with a team can hold one.",
                        api.spec.name, api.spec.team
                    ),
                },
            )
            .with_param(api.spec.name.clone())
            .with_code("subscription_required")),
        }
    }

    /// The newest published version newer than `api`, if any.
    pub fn successor(&self, api: &Api) -> Option<&Arc<Api>> {
        self.apis.get(&api.spec.name)?.values().rev().find(|a| {
            a.version_number() > api.version_number() && a.state.status == Status::Published
        })
    }

    /// What a caller of `team` sees in `GET /catalog`: listed versions (published,
    /// deprecated) plus the team's own drafts.
    pub fn visible_to<'a>(
        &'a self,
        team: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Arc<Api>, Access)> + 'a {
        self.all().filter_map(move |a| {
            let access = self.access(a, team);
            let visible = a.state.status.listed()
                || (a.state.status == Status::Draft && access == Access::Owner);
            visible.then_some((a, access))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Source, State};
    use crate::spec::ApiSpec;

    fn api(name: &str, version: &str, status: Status) -> Api {
        let spec: ApiSpec = serde_json::from_value(serde_json::json!({
            "name": name, "version": version, "team": "owners", "model": "m", "prompt": "hi",
        }))
        .unwrap();
        Api::new(
            spec,
            State {
                status,
                deprecated_at: Some(1),
                sunset_at: None,
                auto_approve: false,
                source: Source::Store,
            },
        )
        .unwrap()
    }

    fn sub(team: &str, status: SubStatus) -> SubscriptionView {
        SubscriptionView {
            id: format!("sub_{team}"),
            api: "s".into(),
            team: team.into(),
            status,
        }
    }

    #[test]
    fn resolves_versions() {
        let c = Catalog::new(
            vec![
                api("s", "v1", Status::Deprecated),
                api("s", "v2", Status::Published),
                api("s", "v10", Status::Draft),
            ],
            vec![],
        );
        assert_eq!(c.resolve("s", None).unwrap().spec.version, "v2");
        assert_eq!(c.resolve("s", Some("v10")).unwrap().spec.version, "v10");
        assert_eq!(c.resolve("s", Some("v3")).unwrap_err().status, 404);
        assert_eq!(c.resolve("nope", None).unwrap_err().status, 404);
        assert_eq!(
            c.successor(&c.resolve("s", Some("v1")).unwrap().clone())
                .unwrap()
                .spec
                .version,
            "v2"
        );
        let versions: Vec<&str> = c.versions("s").map(|a| a.spec.version.as_str()).collect();
        assert_eq!(versions, ["v1", "v2", "v10"]);
    }

    #[test]
    fn lifecycle_and_subscriptions_decide_access() {
        let c = Catalog::new(
            vec![
                api("s", "v1", Status::Retired),
                api("s", "v2", Status::Published),
                api("s", "v3", Status::Draft),
            ],
            vec![
                sub("subbed", SubStatus::Approved),
                sub("waiting", SubStatus::Pending),
                sub("gone", SubStatus::Revoked),
            ],
        );
        let v = |n| c.resolve("s", Some(n)).unwrap().clone();
        let code = |a: &Api, t: Option<&str>| {
            c.authorize(a, t)
                .err()
                .and_then(|e| e.code.map(|c| c.to_string()))
        };
        assert_eq!(
            c.authorize(&v("v1"), Some("owners")).unwrap_err().status,
            410
        );
        assert_eq!(code(&v("v2"), Some("owners")), None);
        assert_eq!(code(&v("v2"), Some("subbed")), None);
        assert_eq!(
            code(&v("v2"), Some("waiting")).as_deref(),
            Some("subscription_pending")
        );
        assert_eq!(
            code(&v("v2"), Some("gone")).as_deref(),
            Some("subscription_required")
        );
        assert_eq!(
            code(&v("v2"), None).as_deref(),
            Some("subscription_required")
        );
        assert_eq!(
            code(&v("v3"), Some("subbed")).as_deref(),
            Some("api_not_published")
        );
        assert_eq!(code(&v("v3"), Some("owners")), None);
        let seen: Vec<&str> = c
            .visible_to(Some("subbed"))
            .map(|(a, _)| a.spec.version.as_str())
            .collect();
        assert_eq!(seen, ["v2"]);
        let seen: Vec<&str> = c
            .visible_to(Some("owners"))
            .map(|(a, _)| a.spec.version.as_str())
            .collect();
        assert_eq!(seen, ["v2", "v3"]);
    }
}
