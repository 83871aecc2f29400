//! Checks and normalisation of input before it reaches the database.

use crate::{BudgetSpec, KeyPatch, NewApi, NewKey, NewTeam, StatusChange, StoreError, TeamPatch};

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

/// Ids and names: non-empty, at most 256 bytes, no control characters.
fn ident(what: &str, s: &str) -> Result<(), StoreError> {
    if s.is_empty() {
        return Err(invalid(format!("{what} must not be empty")));
    }
    if s.len() > 256 {
        return Err(invalid(format!("{what} is longer than 256 bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(format!("{what} contains control characters")));
    }
    Ok(())
}

/// A key hash: SHA-256 as 64 lowercase hex digits (never a secret by mistake).
pub(crate) fn hash(h: &str) -> Result<(), StoreError> {
    if h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(invalid(
            "key hash must be a SHA-256 in 64 lowercase hex digits",
        ))
    }
}

fn budget(b: &BudgetSpec) -> Result<(), StoreError> {
    for (name, v) in [("daily_usd", b.daily_usd), ("monthly_usd", b.monthly_usd)] {
        if let Some(v) = v {
            if !v.is_finite() || v < 0.0 {
                return Err(invalid(format!("budget {name} must be a number >= 0")));
            }
        }
    }
    if let Some(p) = b.soft_pct {
        if !(0.0..=100.0).contains(&p) {
            return Err(invalid("budget soft_pct must be within 0..=100"));
        }
    }
    Ok(())
}

/// Metadata is a JSON object; `null` becomes `{}`.
fn metadata(m: &mut serde_json::Value) -> Result<(), StoreError> {
    match m {
        serde_json::Value::Object(_) => Ok(()),
        serde_json::Value::Null => {
            *m = serde_json::Value::Object(Default::default());
            Ok(())
        }
        _ => Err(invalid("metadata must be a JSON object")),
    }
}

pub(crate) fn new_team(t: &mut NewTeam) -> Result<(), StoreError> {
    ident("team id", &t.id)?;
    budget(&t.budget)?;
    metadata(&mut t.metadata)
}

pub(crate) fn team_patch(p: &mut TeamPatch) -> Result<(), StoreError> {
    if let Some(b) = &p.budget {
        budget(b)?;
    }
    if let Some(m) = &mut p.metadata {
        metadata(m)?;
    }
    Ok(())
}

pub(crate) fn new_key(k: &mut NewKey) -> Result<(), StoreError> {
    ident("key id", &k.id)?;
    ident("key name", &k.name)?;
    hash(&k.hash)?;
    budget(&k.budget)?;
    metadata(&mut k.metadata)
}

pub(crate) fn key_patch(p: &mut KeyPatch) -> Result<(), StoreError> {
    if let Some(n) = &p.name {
        ident("key name", n)?;
    }
    if let Some(b) = &p.budget {
        budget(b)?;
    }
    if let Some(m) = &mut p.metadata {
        metadata(m)?;
    }
    Ok(())
}

/// The statuses of an API version.
pub(crate) const API_STATUSES: [&str; 4] = ["draft", "published", "deprecated", "retired"];

/// The decisions on a subscription ([`crate::Store::decide_subscription`]).
pub(crate) const SUBSCRIPTION_DECISIONS: [&str; 3] = ["approved", "rejected", "revoked"];

/// The statuses of a subscription.
pub(crate) const SUBSCRIPTION_STATUSES: [&str; 4] = ["pending", "approved", "rejected", "revoked"];

fn one_of(what: &str, s: &str, allowed: &[&str]) -> Result<(), StoreError> {
    if allowed.contains(&s) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} must be one of {} (got {s:?})",
            allowed.join(", ")
        )))
    }
}

/// An API's name and version.
pub(crate) fn api_id(name: &str, version: &str) -> Result<(), StoreError> {
    ident("API name", name)?;
    ident("API version", version)
}

/// An API name alone (subscriptions, filters).
pub(crate) fn api_name(name: &str) -> Result<(), StoreError> {
    ident("API name", name)
}

pub(crate) fn team_id(id: &str) -> Result<(), StoreError> {
    ident("team id", id)
}

pub(crate) fn new_api(a: &NewApi) -> Result<(), StoreError> {
    api_id(&a.name, &a.version)?;
    ident("team id", &a.team_id)?;
    one_of("API status", &a.status, &API_STATUSES)
}

pub(crate) fn status_change(c: &StatusChange) -> Result<(), StoreError> {
    one_of("API status", &c.to, &API_STATUSES)?;
    for from in &c.allowed_from {
        one_of("API status", from, &API_STATUSES)?;
    }
    Ok(())
}

pub(crate) fn subscription_decision(to: &str, allowed_from: &[String]) -> Result<(), StoreError> {
    one_of("subscription decision", to, &SUBSCRIPTION_DECISIONS)?;
    for from in allowed_from {
        one_of("subscription status", from, &SUBSCRIPTION_STATUSES)?;
    }
    Ok(())
}

/// JSON text of a value stored in a TEXT column.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| invalid(format!("cannot encode JSON: {e}")))
}

/// A value read back from a JSON TEXT column.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    column: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::decode(column, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes() {
        assert!(hash(&"a".repeat(64)).is_ok());
        assert!(hash(&"0123456789abcdef".repeat(4)).is_ok());
        assert!(hash(&"A".repeat(64)).is_err());
        assert!(hash(&"a".repeat(63)).is_err());
        assert!(hash("tg-secret-key").is_err());
    }

    #[test]
    fn budgets() {
        assert!(budget(&BudgetSpec::default()).is_ok());
        let b = |d, s| BudgetSpec {
            daily_usd: d,
            monthly_usd: None,
            soft_pct: s,
        };
        assert!(budget(&b(Some(1.5), Some(80.0))).is_ok());
        assert!(budget(&b(Some(-1.0), None)).is_err());
        assert!(budget(&b(Some(f64::NAN), None)).is_err());
        assert!(budget(&b(None, Some(101.0))).is_err());
    }

    #[test]
    fn api_inputs() {
        assert!(api_id("sentiment", "v1").is_ok());
        assert!(api_id("", "v1").is_err());
        assert!(api_id("sentiment", "").is_err());
        let change = |to: &str, from: &[&str]| StatusChange {
            to: to.into(),
            allowed_from: from.iter().map(|s| s.to_string()).collect(),
            deprecated_at: None,
            sunset_at: None,
        };
        assert!(status_change(&change("published", &["draft"])).is_ok());
        assert!(status_change(&change("live", &["draft"])).is_err());
        assert!(status_change(&change("published", &["nope"])).is_err());
        assert!(subscription_decision("approved", &["pending".into()]).is_ok());
        assert!(subscription_decision("pending", &[]).is_err());
        assert!(subscription_decision("revoked", &["gone".into()]).is_err());
    }

    #[test]
    fn metadata_objects() {
        let mut m = serde_json::Value::Null;
        metadata(&mut m).unwrap();
        assert_eq!(m, serde_json::json!({}));
        assert!(metadata(&mut serde_json::json!([1])).is_err());
    }
}
