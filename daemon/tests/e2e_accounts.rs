//! Accounts (issue 19), in-process with the scripted engine unless noted:
//! login and the session cookie, 401 `login_required` without a session,
//! lockout with backoff, idle logout that reading the status does not
//! extend, logout dropping the user's conversations, one user unable to
//! see or use another's conversations by id or by API, personal API tokens
//! for the OpenAI API, the auditor role, the SSO header trusted only from
//! the configured proxy, every event audited under the account's
//! pseudonymous id, and passwords and tokens in no log, error or audit
//! record. Needs `--features test-engine`.

#![cfg(feature = "test-engine")]

mod e2e_support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use e2e_support::*;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use medgemma_protocol::accounts::{
    Account, AccountsFile, Role, hash_password, new_account_id, new_token,
};
use serde_json::json;

const LI_PASSWORD: &str = "CANARY-pw-li-7f3a-correct-horse";
const WANG_PASSWORD: &str = "CANARY-pw-wang-91bc-battery-staple";
const AUDITOR_PASSWORD: &str = "CANARY-pw-audit-c0de-staple";

/// Writes the accounts file: dr.li and dr.wang (clinicians), audit.kim
/// (auditor); returns li's and kim's API tokens.
fn accounts(dir: &Path) -> (String, String) {
    let dir = dir.join("accounts");
    std::fs::create_dir_all(&dir).unwrap();
    let mut file = AccountsFile::new();
    let mut tokens = Vec::new();
    for (name, role, password) in [
        ("dr.li", Role::Clinician, LI_PASSWORD),
        ("dr.wang", Role::Clinician, WANG_PASSWORD),
        ("audit.kim", Role::Auditor, AUDITOR_PASSWORD),
    ] {
        let (token, shown) = new_token(None, 1).unwrap();
        tokens.push(shown);
        file.accounts.push(Account {
            id: new_account_id().unwrap(),
            name: name.into(),
            role,
            enabled: true,
            password: Some(hash_password(password).unwrap()),
            created_unix: 1,
            changed_unix: 1,
            tokens: vec![token],
        });
    }
    file.write(&dir).unwrap();
    (tokens.remove(0), tokens.remove(1))
}

fn with_accounts(extra: &str) -> Setup {
    Setup {
        auth_mode: "accounts",
        extra_auth: format!("lockout_after_failures = 3\nlockout_secs = 1\n{extra}"),
        ..Setup::default()
    }
}

/// A server with accounts whose accounts file is written before it starts.
fn server(extra: &str) -> (Server, String, String) {
    let s = Server::start(&with_accounts(extra));
    let (li, kim) = accounts(s.dir.path());
    (s, li, kim)
}

fn login_req(user: &str, password: &str) -> Request<Full<Bytes>> {
    post_json("/api/login", &json!({"user": user, "password": password}))
}

/// Logs in; returns the `Cookie` header value of the session.
async fn login(socket: &Path, user: &str, password: &str) -> String {
    let resp = send(socket, login_req(user, password)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("; HttpOnly")
            && cookie.contains("; SameSite=Strict")
            && cookie.contains("; Path=/"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "plain http through the loopback proxy"
    );
    cookie.split(';').next().unwrap().to_owned()
}

fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit-")
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn account_id(dir: &Path, name: &str) -> String {
    AccountsFile::read(&dir.join("accounts"))
        .unwrap()
        .by_name(name)
        .unwrap()
        .id
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn login_opens_the_api_and_the_status_names_the_user() {
    let (s, _, _) = server("");
    let (_, v) = json_of(send(&s.socket, get("/api/status")).await).await;
    assert_eq!(
        v["auth"],
        json!({"mode": "accounts", "required": true, "user": null, "role": null, "idle_logout_s": 900})
    );
    let ask = json!({"conversation_id": null, "message": "hello", "max_new_tokens": 8});
    for req in [post_json("/api/chat", &ask), get("/api/conversations")] {
        assert_eq!(
            error_code(send(&s.socket, req).await, StatusCode::UNAUTHORIZED).await,
            "login_required"
        );
    }
    let cookie = login(&s.socket, " Dr.Li ", LI_PASSWORD).await;
    let (_, v) = json_of(send(&s.socket, with_cookie(get("/api/status"), &cookie)).await).await;
    assert_eq!(v["auth"]["user"], "dr.li");
    assert_eq!(v["auth"]["role"], "clinician");
    let events = chat_as(&s.socket, &cookie, ask.clone()).await;
    done(&events);
    // The answer's actor is the account's pseudonymous id, not its name.
    let li = account_id(s.dir.path(), "dr.li");
    let recs = audit_records(s.dir.path());
    let answer = recs.iter().rfind(|r| r["event"] == "answer").unwrap();
    assert_eq!(answer["actor"], li.as_str());
    let login_rec = recs.iter().rfind(|r| r["event"] == "login").unwrap();
    assert_eq!(
        (login_rec["actor"].as_str(), login_rec["outcome"].as_str()),
        (Some(li.as_str()), Some("ok"))
    );
    assert!(
        !recs.iter().any(|r| r.to_string().contains("dr.li")),
        "no names in the log"
    );
    // A cookie of a session that does not exist is no session.
    let forged = format!("mgd_session={}", "ab".repeat(32));
    let resp = send(&s.socket, with_cookie(get("/api/conversations"), &forged)).await;
    assert_eq!(
        error_code(resp, StatusCode::UNAUTHORIZED).await,
        "login_required"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_lock_the_name_out_with_backoff() {
    let (s, _, _) = server("");
    for unknown_or_wrong in [
        ("dr.li", "wrong password 1"),
        ("nobody", "wrong password 2"),
    ] {
        let resp = send(&s.socket, login_req(unknown_or_wrong.0, unknown_or_wrong.1)).await;
        assert_eq!(
            error_code(resp, StatusCode::UNAUTHORIZED).await,
            "login_failed"
        );
    }
    let resp = send(&s.socket, login_req("dr.li", "wrong password 3")).await;
    assert_eq!(
        error_code(resp, StatusCode::UNAUTHORIZED).await,
        "login_failed"
    );
    let resp = send(&s.socket, login_req("dr.li", "wrong password 4")).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    let (status, v) = json_of(resp).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["error"]["code"], "locked_out");
    assert_eq!(v["error"]["retry_after_s"], 1);
    // Locked: even the right password is refused until the time is up.
    let resp = send(&s.socket, login_req("dr.li", LI_PASSWORD)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    login(&s.socket, "dr.li", LI_PASSWORD).await;
    // The second lockout lasts twice as long.
    for i in 0..3 {
        let _ = send(&s.socket, login_req("dr.li", &format!("wrong again {i}"))).await;
    }
    let (_, v) = json_of(send(&s.socket, login_req("dr.li", LI_PASSWORD)).await).await;
    assert_eq!(v["error"]["retry_after_s"], 2, "{v}");
    let li = account_id(s.dir.path(), "dr.li");
    let recs = audit_records(s.dir.path());
    let lockouts: Vec<_> = recs.iter().filter(|r| r["event"] == "lockout").collect();
    assert_eq!(lockouts.len(), 2);
    assert_eq!(lockouts[0]["actor"], li.as_str());
    assert_eq!(
        (
            lockouts[0]["seconds"].as_u64(),
            lockouts[1]["seconds"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let failed = recs
        .iter()
        .filter(|r| r["event"] == "login" && r["outcome"] == "rejected")
        .count();
    assert!(failed >= 7, "{failed}");
    assert!(
        recs.iter()
            .any(|r| r["event"] == "login" && r["actor"] == "unknown-account"),
        "a name that matches no account is recorded without the name"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_cannot_see_or_use_anothers_conversations_and_logout_drops_them() {
    let (s, _, _) = server("");
    let li = login(&s.socket, "dr.li", LI_PASSWORD).await;
    let wang = login(&s.socket, "dr.wang", WANG_PASSWORD).await;
    let events = chat_as(
        &s.socket,
        &li,
        json!({"conversation_id": null, "message": "Dr Li asks", "max_new_tokens": 8}),
    )
    .await;
    let id = events[0].json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, list) =
        json_of(send(&s.socket, with_cookie(get("/api/conversations"), &wang)).await).await;
    assert_eq!(list, json!({"conversations": []}));
    let tries: Vec<Request<Full<Bytes>>> = vec![
        get(&format!("/api/conversations/{id}")),
        request("DELETE", &format!("/api/conversations/{id}"))
            .header("origin", ORIGIN)
            .body(Full::new(Bytes::new()))
            .unwrap(),
        post_json("/api/chat/cancel", &json!({"conversation_id": id})),
        post_json(
            &format!("/api/conversations/{id}/export"),
            &json!({"format": "markdown"}),
        ),
        post_json(
            "/api/chat",
            &json!({"conversation_id": id, "message": "mine now"}),
        ),
    ];
    for req in tries {
        let resp = send(&s.socket, with_cookie(req, &wang)).await;
        assert_eq!(
            error_code(resp, StatusCode::NOT_FOUND).await,
            "conversation_not_found"
        );
    }
    let (_, list) =
        json_of(send(&s.socket, with_cookie(get("/api/conversations"), &li)).await).await;
    assert_eq!(list["conversations"][0]["id"], id.as_str());

    // Logout ends the session and drops the conversations with it.
    let resp = send(
        &s.socket,
        with_cookie(post_json("/api/logout", &json!({})), &li),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let resp = send(&s.socket, with_cookie(get("/api/conversations"), &li)).await;
    assert_eq!(
        error_code(resp, StatusCode::UNAUTHORIZED).await,
        "login_required"
    );
    let li_again = login(&s.socket, "dr.li", LI_PASSWORD).await;
    let (_, list) =
        json_of(send(&s.socket, with_cookie(get("/api/conversations"), &li_again)).await).await;
    assert_eq!(list, json!({"conversations": []}), "dropped at logout");
    let recs = audit_records(s.dir.path());
    let logout = recs.iter().rfind(|r| r["event"] == "logout").unwrap();
    assert_eq!(logout["reason"], "requested");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_end_and_reading_the_status_does_not_keep_them() {
    let (s, _, _) = server("idle_logout_secs = 1\n");
    let li = login(&s.socket, "dr.li", LI_PASSWORD).await;
    chat_as(
        &s.socket,
        &li,
        json!({"conversation_id": null, "message": "before the pause", "max_new_tokens": 8}),
    )
    .await;
    for _ in 0..6 {
        let (_, v) = json_of(send(&s.socket, with_cookie(get("/api/status"), &li)).await).await;
        assert_eq!(v["auth"]["idle_logout_s"], 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, v) = json_of(send(&s.socket, with_cookie(get("/api/status"), &li)).await).await;
    assert!(v["auth"]["user"].is_null(), "{v}");
    let resp = send(&s.socket, with_cookie(get("/api/conversations"), &li)).await;
    assert_eq!(
        error_code(resp, StatusCode::UNAUTHORIZED).await,
        "login_required"
    );
    let recs = audit_records(s.dir.path());
    assert_eq!(
        recs.iter().rfind(|r| r["event"] == "logout").unwrap()["reason"],
        "idle"
    );
    let (_, v) = json_of(send(&s.socket, get("/api/status")).await).await;
    assert_eq!(
        v["conversations"]["count"], 0,
        "the idle user's conversations are gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_account_loses_its_session_and_its_token() {
    let (s, token, _) = server("");
    let li = login(&s.socket, "dr.li", LI_PASSWORD).await;
    let dir = s.dir.path().join("accounts");
    let mut file = AccountsFile::read(&dir).unwrap();
    let a = file.by_name_mut("dr.li").unwrap();
    a.enabled = false;
    a.changed_unix = u64::MAX / 2;
    file.write(&dir).unwrap();
    let resp = send(&s.socket, with_cookie(get("/api/conversations"), &li)).await;
    assert_eq!(
        error_code(resp, StatusCode::UNAUTHORIZED).await,
        "login_required"
    );
    let models = request("GET", "/v1/models")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        error_code(send(&s.socket, models).await, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    let resp = send(&s.socket, login_req("dr.li", LI_PASSWORD)).await;
    assert_eq!(
        error_code(resp, StatusCode::UNAUTHORIZED).await,
        "login_failed"
    );
    let recs = audit_records(s.dir.path());
    assert_eq!(
        recs.iter().rfind(|r| r["event"] == "logout").unwrap()["reason"],
        "account_changed"
    );
}

fn bearer(req: Request<Full<Bytes>>, token: &str) -> Request<Full<Bytes>> {
    let mut req = req;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_api_takes_personal_tokens_and_audits_their_use() {
    let (s, li_token, kim_token) = server("");
    let models = || get("/v1/models");
    assert_eq!(
        error_code(send(&s.socket, models()).await, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    let (status, v) = json_of(send(&s.socket, bearer(models(), &li_token)).await).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let body =
        json!({"model": "x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let (status, v) = json_of(
        send(
            &s.socket,
            bearer(post_json("/v1/chat/completions", &body), &li_token),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // A wrong secret for a real token id, and an auditor's token.
    let mut wrong = li_token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        error_code(
            send(&s.socket, bearer(models(), &wrong)).await,
            StatusCode::UNAUTHORIZED
        )
        .await,
        "invalid_token"
    );
    assert_eq!(
        error_code(
            send(&s.socket, bearer(models(), &kim_token)).await,
            StatusCode::FORBIDDEN
        )
        .await,
        "role_not_allowed"
    );
    // An auditor cannot log in to chat either.
    let resp = send(&s.socket, login_req("audit.kim", AUDITOR_PASSWORD)).await;
    assert_eq!(
        error_code(resp, StatusCode::FORBIDDEN).await,
        "role_not_allowed"
    );
    let li = account_id(s.dir.path(), "dr.li");
    let recs = audit_records(s.dir.path());
    let uses: Vec<_> = recs.iter().filter(|r| r["event"] == "token_use").collect();
    assert_eq!(uses.len(), 2, "one per request");
    assert_eq!(uses[0]["actor"], li.as_str());
    assert_eq!(uses[0]["token"], li_token.split('_').nth(1).unwrap());
    let answer = recs.iter().rfind(|r| r["event"] == "answer").unwrap();
    assert_eq!(answer["actor"], li.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sso_header_counts_only_in_sso_mode_and_only_from_the_proxy() {
    let me = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let me = me.unwrap();
    let from_proxy = |name: &str| {
        let mut req = get("/api/conversations");
        req.headers_mut()
            .insert("x-remote-user", name.parse().unwrap());
        req
    };
    // Accounts mode: the header means nothing.
    let (s, _, _) = server("");
    let resp = send(&s.socket, from_proxy("dr.li")).await;
    assert_eq!(
        error_code(resp, StatusCode::UNAUTHORIZED).await,
        "login_required"
    );
    drop(s);
    // SSO mode, but this test's peer is not the proxy: ignored.
    let other = if me == 65534 { 65533 } else { 65534 };
    let s = Server::start(&Setup {
        auth_mode: "sso",
        extra_auth: format!("sso_proxy_user = \"{other}\"\n"),
        ..Setup::default()
    });
    accounts(s.dir.path());
    let resp = send(&s.socket, from_proxy("dr.li")).await;
    assert_eq!(
        error_code(resp, StatusCode::UNAUTHORIZED).await,
        "login_required"
    );
    drop(s);
    // SSO mode, from the configured proxy's uid: the named account.
    let s = Server::start(&Setup {
        auth_mode: "sso",
        extra_auth: format!("sso_proxy_user = \"{me}\"\n"),
        ..Setup::default()
    });
    accounts(s.dir.path());
    let (status, v) = json_of(send(&s.socket, from_proxy("dr.li")).await).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mut status_req = get("/api/status");
    status_req
        .headers_mut()
        .insert("x-remote-user", "dr.li".parse().unwrap());
    let (_, v) = json_of(send(&s.socket, status_req).await).await;
    assert_eq!(v["auth"]["user"], "dr.li");
    assert_eq!(v["auth"]["mode"], "sso");
    // Unknown names and auditors are not let in; the password login is off.
    let resp = send(&s.socket, from_proxy("mallory")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = send(&s.socket, from_proxy("audit.kim")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = send(&s.socket, login_req("dr.li", LI_PASSWORD)).await;
    assert_eq!(error_code(resp, StatusCode::FORBIDDEN).await, "sso_only");
    let recs = audit_records(s.dir.path());
    let login_rec = recs.iter().rfind(|r| r["event"] == "login").unwrap();
    assert_eq!(login_rec["method"], "sso");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_tls_proxy_the_session_cookie_is_secure() {
    let s = Server::start(&Setup {
        auth_mode: "accounts",
        extra_server: "allowed_origins = [\"https://medgemma.hospital.example\"]\n".to_owned(),
        ..Setup::default()
    });
    accounts(s.dir.path());
    let mut req = login_req("dr.li", LI_PASSWORD);
    req.headers_mut()
        .insert("host", "medgemma.hospital.example".parse().unwrap());
    req.headers_mut().insert(
        "origin",
        "https://medgemma.hospital.example".parse().unwrap(),
    );
    let resp = send(&s.socket, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
}

/// The real process: passwords and tokens in no stderr line, audit record,
/// error body or file of the daemon's.
#[tokio::test(flavor = "multi_thread")]
async fn passwords_and_tokens_never_reach_logs_errors_or_the_audit() {
    let setup = with_accounts("");
    let dir = tempfile::Builder::new()
        .prefix("mgd-e2e")
        .tempdir()
        .unwrap();
    let config = write_config(dir.path(), &setup);
    let (token, _) = accounts(dir.path());
    let d = Daemon::start_with(dir, &config, UNSANDBOXED, Duration::from_secs(30));
    let mut bodies = String::new();
    for (user, password) in [
        ("dr.li", "CANARY-pw-wrong-1111"),
        ("dr.li", LI_PASSWORD),
        ("nobody", "CANARY-pw-nobody-2222"),
    ] {
        let resp = send(&d.socket, login_req(user, password)).await;
        bodies.push_str(&String::from_utf8_lossy(&body_bytes(resp).await));
    }
    for t in [
        token.clone(),
        format!("{token}x"),
        "mgd_tok-000000000000_CANARY".to_owned(),
    ] {
        let resp = send(&d.socket, bearer(get("/v1/models"), &t)).await;
        bodies.push_str(&String::from_utf8_lossy(&body_bytes(resp).await));
    }
    let malformed = post_json(
        "/api/login",
        &json!({"user": "dr.li", "password": 5, "x": "CANARY-pw-json-3333"}),
    );
    bodies.push_str(&String::from_utf8_lossy(
        &body_bytes(send(&d.socket, malformed).await).await,
    ));
    let secret = token.rsplit('_').next().unwrap().to_owned();
    let mut stored = String::new();
    let mut stack = vec![d.dir.path().to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                stored.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    let log = d.log();
    for canary in ["CANARY-pw", secret.as_str()] {
        assert!(!log.contains(canary), "{canary} in the daemon's stderr");
        assert!(!bodies.contains(canary), "{canary} in an answer: {bodies}");
    }
    assert!(!stored.contains("CANARY-pw"), "a password is stored");
    // The accounts file holds the token's hash (written by the test); nothing holds the secret.
    assert!(!stored.contains(&secret), "the token's secret is stored");
}
