//! The conversation list and what leaves it: `GET /api/conversations` (the
//! caller's conversations, newest first), `GET /api/conversations/{id}`
//! (its questions and answers, with the folded reasoning and the terms) and
//! `POST /api/conversations/{id}/export` (`{"format": "markdown"|"print"}`
//! → `{"markdown"}`, the text the UI downloads or shows as a print view).
//!
//! An export is recorded in the audit log before it is returned (an
//! `export` event of kind `conversation`, naming the account and the
//! conversation, without text); when the record cannot be written the
//! export is refused.
//!
//! Owns: the list's and the export's shape. Must never: return another
//! owner's conversation, or let an export leave unrecorded.

use std::sync::Arc;
use std::time::SystemTime;

use hyper::{Response, StatusCode};
use medgemma_audit::{Event, ExportKind, Outcome};
use serde::Deserialize;

use super::chat::{audit_error, conversation_error};
use super::conversations::{ConversationError, Transcript, is_id};
use super::http::{ApiError, Body, json, read_json};
use super::{AppState, Caller};
use crate::{audit_log, log};

/// The sentence every export carries.
pub const DISCLAIMER: &str =
    "Not a medical device. MedGemma output supports and does not replace clinical judgement.";

/// `GET /api/conversations`.
pub fn list(state: &AppState, caller: &Caller) -> Response<Body> {
    let conversations = state.conversations.list(caller.owner.as_deref());
    json(
        StatusCode::OK,
        &serde_json::json!({ "conversations": conversations }),
    )
}

fn transcript(state: &AppState, id: &str, caller: &Caller) -> Result<Transcript, ApiError> {
    if !is_id(id) {
        return Err(conversation_error(ConversationError::NotFound));
    }
    state
        .conversations
        .transcript(id, caller.owner.as_deref())
        .map_err(conversation_error)
}

/// `GET /api/conversations/{id}`.
pub fn get(state: &AppState, id: &str, caller: &Caller) -> Result<Response<Body>, ApiError> {
    let t = transcript(state, id, caller)?;
    let mut messages = Vec::with_capacity(t.turns.len() * 2);
    for turn in &t.turns {
        messages.push(serde_json::json!({ "role": "user", "content": turn.user }));
        if let Some(a) = &turn.answer {
            let mut m = serde_json::json!({
                "role": "assistant",
                "content": a.content,
                "terms": a.terms,
            });
            if let Some(r) = &a.reasoning {
                m["reasoning"] = serde_json::Value::String(r.clone());
            }
            messages.push(m);
        }
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "style": t.style.as_str(), "messages": messages }),
    ))
}

/// The export body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    format: ExportFormat,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ExportFormat {
    Markdown,
    Print,
}

/// `POST /api/conversations/{id}/export`.
pub async fn export(
    state: Arc<AppState>,
    req: hyper::Request<hyper::body::Incoming>,
    id: &str,
    caller: &Caller,
) -> Result<Response<Body>, ApiError> {
    let body: ExportBody = read_json(req).await?;
    let t = transcript(&state, id, caller)?;
    let event = Event::Export {
        actor: caller.actor.clone(),
        kind: ExportKind::Conversation,
        conversation: Some(audit_log::conversation_id(id)),
        outcome: Outcome::Ok,
    };
    if let Err(e) = state.audit.append_async(event).await {
        log::error(format_args!(
            "audit: cannot record a conversation export: {e}"
        ));
        return Err(audit_error());
    }
    let _ = body.format; // both formats are Markdown; the UI renders the print view
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "markdown": markdown(&t, SystemTime::now()) }),
    ))
}

/// The Markdown of a conversation: a header with the export time, the
/// answer style and the disclaimer, then each question and answer (answers
/// are Markdown already) with the terms found in them.
pub fn markdown(t: &Transcript, now: SystemTime) -> String {
    let mut out = String::new();
    out.push_str("# MedGemma conversation\n\n");
    out.push_str(&format!("- Exported: {}\n", utc_minute(now)));
    out.push_str(&format!("- Answer style: {}\n", t.style.as_str()));
    out.push_str(&format!("- {DISCLAIMER}\n\n"));
    for (i, turn) in t.turns.iter().enumerate() {
        let n = i + 1;
        out.push_str(&format!("## Question {n}\n\n{}\n\n", turn.user.trim_end()));
        let Some(a) = &turn.answer else {
            continue;
        };
        out.push_str(&format!("## Answer {n}\n\n{}\n\n", a.content.trim_end()));
        if !a.terms.is_empty() {
            out.push_str("Terms:\n\n");
            for term in &a.terms {
                out.push_str(&format!(
                    "- {} → {} ({}, {})\n",
                    term.phrase, term.preferred, term.code, term.system
                ));
            }
            out.push('\n');
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM UTC`.
fn utc_minute(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days (days since 1970-01-01).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::conversations::{StoredAnswer, StoredTurn};
    use crate::server::terms::FoundTerm;
    use medgemma_protocol::config::AnswerStyle;

    #[test]
    fn markdown_has_the_questions_answers_terms_and_disclaimer() {
        let t = Transcript {
            style: AnswerStyle::Brief,
            turns: vec![StoredTurn {
                user: "Is it a heart attack?".into(),
                images: Vec::new(),
                answer: Some(StoredAnswer {
                    content: "Record an ECG.".into(),
                    reasoning: Some("never exported".into()),
                    terms: vec![FoundTerm {
                        phrase: "heart attack".into(),
                        preferred: "Acute myocardial infarction".into(),
                        code: "I21.9".into(),
                        system: "ICD-10".into(),
                    }],
                }),
            }],
        };
        let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_833_000);
        let md = markdown(&t, when);
        assert!(md.contains("- Exported: 2026-11-28 02:30 UTC"), "{md}");
        assert!(md.contains("## Question 1\n\nIs it a heart attack?"));
        assert!(md.contains("## Answer 1\n\nRecord an ECG."));
        assert!(md.contains("- heart attack → Acute myocardial infarction (I21.9, ICD-10)"));
        assert!(md.contains(DISCLAIMER));
        assert!(md.contains("Answer style: brief"));
        assert!(!md.contains("never exported"), "the reasoning stays out");
    }
}
