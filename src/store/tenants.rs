//! Tenant changes: from config (re-applied when the entry's hash changes) or from an admin
//! (a partial patch), each written together with its `budget_change` ledger entry.

use serde_json::{Map, Value, json};

use super::{LedgerEntry, LedgerKind, TenantRecord, TenantSettings};
use crate::billing::{Micros, format_money};
use crate::config::{PeriodKind, TenantConfig, mask_webhook_url};

impl Default for TenantSettings {
    /// The `[[tenants]]` defaults: what a tenant created by an admin starts from.
    fn default() -> Self {
        let entry = TenantConfig::default();
        Self {
            budget: None,
            period: entry.period,
            creates_per_minute: entry.creates_per_minute,
            creates_burst: entry.creates_burst,
            reads_per_minute: entry.reads_per_minute,
            reads_burst: entry.reads_burst,
            max_concurrent_tasks: entry.max_concurrent_tasks,
            user_budget: None,
            user_creates_per_minute: entry.user_creates_per_minute,
            allowed_qualities: entry.allowed_qualities,
            alert_webhook_url: None,
        }
    }
}

impl TenantSettings {
    /// The settings as `[[tenants]]` fields (money as decimal strings, "" for no cap): the
    /// shape admins read and write, and what audit notes quote. The alert webhook shows its
    /// host only: its path or query is a credential.
    pub fn view(&self) -> Map<String, Value> {
        let money = |m: Option<Micros>| m.map(format_money).unwrap_or_default();
        let value = json!({
            "budget": money(self.budget),
            "period": self.period,
            "creates_per_minute": self.creates_per_minute,
            "creates_burst": self.creates_burst,
            "reads_per_minute": self.reads_per_minute,
            "reads_burst": self.reads_burst,
            "max_concurrent_tasks": self.max_concurrent_tasks,
            "user_budget": money(self.user_budget),
            "user_creates_per_minute": self.user_creates_per_minute,
            "allowed_qualities": self.allowed_qualities,
            "alert_webhook_url": mask_webhook_url(self.alert_webhook_url.as_deref().unwrap_or_default()),
        });
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// A partial admin change: each `Some` field replaces the stored one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPatch {
    /// `Some(None)` removes the cap.
    pub budget: Option<Option<Micros>>,
    pub period: Option<PeriodKind>,
    pub creates_per_minute: Option<u32>,
    pub creates_burst: Option<u32>,
    pub reads_per_minute: Option<u32>,
    pub reads_burst: Option<u32>,
    pub max_concurrent_tasks: Option<u32>,
    pub user_budget: Option<Option<Micros>>,
    pub user_creates_per_minute: Option<u32>,
    pub allowed_qualities: Option<Vec<String>>,
    /// `Some(None)` removes it.
    pub alert_webhook_url: Option<Option<String>>,
}

impl TenantPatch {
    pub fn apply(&self, mut settings: TenantSettings) -> TenantSettings {
        fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *slot = value.clone();
            }
        }
        set(&mut settings.budget, &self.budget);
        set(&mut settings.period, &self.period);
        set(&mut settings.creates_per_minute, &self.creates_per_minute);
        set(&mut settings.creates_burst, &self.creates_burst);
        set(&mut settings.reads_per_minute, &self.reads_per_minute);
        set(&mut settings.reads_burst, &self.reads_burst);
        set(&mut settings.max_concurrent_tasks, &self.max_concurrent_tasks);
        set(&mut settings.user_budget, &self.user_budget);
        set(&mut settings.user_creates_per_minute, &self.user_creates_per_minute);
        set(&mut settings.allowed_qualities, &self.allowed_qualities);
        set(&mut settings.alert_webhook_url, &self.alert_webhook_url);
        settings
    }
}

/// An admin's change as the store receives it.
#[derive(Debug, Clone)]
pub struct TenantChange {
    pub patch: TenantPatch,
    /// The admin's `sub`.
    pub actor: String,
    pub request_id: String,
    pub now_ms: i64,
}

/// What `update_tenant` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantUpdate {
    pub record: TenantRecord,
    pub created: bool,
    /// False when the patch changed nothing (then nothing was written or audited).
    pub changed: bool,
}

/// A write the store is asked to make.
pub(super) enum TenantWrite<'a> {
    Config {
        settings: &'a TenantSettings,
        config_hash: &'a str,
        now_ms: i64,
    },
    Admin(&'a TenantChange),
}

/// The record to store and its audit entry, or `None` when nothing is to be written: config
/// whose hash is unchanged (admin changes persist), or a patch that changes nothing.
pub(super) fn plan(
    id: &str,
    write: &TenantWrite<'_>,
    stored: Option<&TenantRecord>,
) -> Option<(TenantRecord, LedgerEntry)> {
    let (settings, config_hash, actor, request_id, now_ms) = match write {
        TenantWrite::Config {
            settings,
            config_hash,
            now_ms,
        } => {
            if stored.is_some_and(|s| s.config_hash == *config_hash) {
                return None;
            }
            ((*settings).clone(), config_hash.to_string(), "config", "", *now_ms)
        }
        TenantWrite::Admin(change) => {
            let base = stored.map(|s| s.settings.clone()).unwrap_or_default();
            let hash = stored.map(|s| s.config_hash.clone()).unwrap_or_default();
            let settings = change.patch.apply(base);
            if stored.is_some_and(|s| s.settings == settings) {
                return None;
            }
            (
                settings,
                hash,
                change.actor.as_str(),
                change.request_id.as_str(),
                change.now_ms,
            )
        }
    };
    let entry = LedgerEntry {
        time_ms: now_ms,
        kind: LedgerKind::BudgetChange,
        tenant: id.to_string(),
        request_id: request_id.to_string(),
        actor: actor.to_string(),
        note: change_note(stored.map(|s| &s.settings), &settings),
        ..LedgerEntry::default()
    };
    let record = TenantRecord {
        id: id.to_string(),
        settings,
        config_hash,
    };
    Some((record, entry))
}

/// The changed fields as a JSON object in `[[tenants]]` form; every field when the tenant is
/// new (then with `"created": true`).
fn change_note(old: Option<&TenantSettings>, new: &TenantSettings) -> String {
    let new_view = new.view();
    let mut note = Map::new();
    match old.map(TenantSettings::view) {
        Some(old_view) => {
            for (field, value) in new_view {
                if old_view.get(&field) != Some(&value) {
                    note.insert(field, value);
                }
            }
        }
        None => {
            note.insert("created".into(), Value::Bool(true));
            note.extend(new_view);
        }
    }
    Value::Object(note).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(settings: TenantSettings, hash: &str) -> TenantRecord {
        TenantRecord {
            id: "t".into(),
            settings,
            config_hash: hash.into(),
        }
    }

    #[test]
    fn config_writes_only_when_its_hash_changes() {
        let settings = TenantSettings::default();
        let write = |hash| TenantWrite::Config {
            settings: &settings,
            config_hash: hash,
            now_ms: 5,
        };
        let stored = record(TenantSettings::default(), "h1");
        assert!(plan("t", &write("h1"), Some(&stored)).is_none());
        let (fresh, entry) = plan("t", &write("h2"), Some(&stored)).expect("a new hash applies");
        assert_eq!(fresh.config_hash, "h2");
        assert_eq!(
            (entry.actor.as_str(), entry.note.as_str(), entry.time_ms),
            ("config", "{}", 5)
        );
        let (_, created) = plan("t", &write("h1"), None).expect("a new tenant is written");
        assert!(created.note.contains("\"created\":true"), "{}", created.note);
    }

    #[test]
    fn an_admin_patch_notes_only_what_it_changed_and_keeps_the_config_hash() {
        let change = TenantChange {
            patch: TenantPatch {
                budget: Some(Some(600_000_000)),
                max_concurrent_tasks: Some(5),
                ..TenantPatch::default()
            },
            actor: "root".into(),
            request_id: "req".into(),
            now_ms: 9,
        };
        let stored = record(TenantSettings::default(), "h1");
        let (fresh, entry) = plan("t", &TenantWrite::Admin(&change), Some(&stored)).expect("a change");
        assert_eq!(fresh.config_hash, "h1");
        assert_eq!(fresh.settings.budget, Some(600_000_000));
        assert_eq!(entry.note, r#"{"budget":"600.000000"}"#);
        assert_eq!((entry.actor.as_str(), entry.request_id.as_str()), ("root", "req"));
        assert!(plan("t", &TenantWrite::Admin(&change), Some(&fresh)).is_none());
    }
}
