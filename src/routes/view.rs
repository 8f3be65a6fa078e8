//! The `vidgate` object added to every task answer: state, money and billed time as the
//! caller should see them (decimal strings, integer ms, RFC 3339 times).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::billing::format_money;
use crate::store::{ReservationRecord, ReservationState};

pub fn vidgate_object(record: &ReservationRecord) -> Value {
    let mut object = json!({
        "tenant": record.tenant,
        "reservation_id": record.reservation_id,
        "state": record.state.as_str(),
        "currency": record.currency,
        "reserved": format_money(record.reserved),
        "billed_input_ms": record.billed_input_ms,
    });
    let Some(map) = object.as_object_mut() else {
        return object;
    };
    if let Some(charged) = record.charged {
        map.insert("charged".into(), json!(format_money(charged)));
    }
    if let Some(output) = record.billed_output_ms {
        map.insert("billed_output_ms".into(), json!(output));
    }
    if let Some(at) = record
        .result_expires_ms
        .and_then(DateTime::<Utc>::from_timestamp_millis)
    {
        map.insert(
            "result_expires_at".into(),
            json!(at.to_rfc3339_opts(SecondsFormat::Secs, true)),
        );
    }
    if let (ReservationState::Settled, Some(task_id)) = (record.state, &record.task_id) {
        map.insert("archived".into(), json!(record.archived));
        map.insert("content_url".into(), json!(crate::archive::content_path(task_id)));
    }
    object
}

/// The upstream task object with the `vidgate` object added.
pub fn with_vidgate(mut task: Value, record: &ReservationRecord) -> Value {
    if let Some(map) = task.as_object_mut() {
        map.insert("vidgate".into(), vidgate_object(record));
    }
    task
}
