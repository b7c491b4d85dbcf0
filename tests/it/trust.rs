//! The trust layer as callers meet it: mutual TLS with SPIFFE ids (a CA and
//! certificates made here with rcgen), PASETO bearer tokens, the role table
//! for every RPC and every role, scope checks (bank, station, officer id,
//! issuing station), maker–checker for rules, admission control, the fail
//! mode on a stalled store, and the explicit limits.

use crate::harness::{edit, ordinary, seed_case, transfer_guard, TestServer};
use crate::metrics::{scrape, value};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use std::path::PathBuf;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};
use transfer_guard::api::admission::{FailMode, Limits};
use transfer_guard::api::identity::Trust;
use transfer_guard::api::proto as pb;
use transfer_guard::auth::token::{generate_key_pair, TokenSigner, TokenVerifier};
use transfer_guard::auth::{Principal, Role};
use transfer_guard::server::Extras;
use transfer_guard::service::Approval;

pub(crate) const TRUST_DOMAIN: &str = "bank-police.test";
const STATION: &str = "heshan-zhongshan-ps";
/// The bank of the harness's requests.
const BANK: &str = "psbc";

/// A test CA with the server's certificate, and client certificates on demand.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "transfer-guard test CA");
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let pki = Pki { dir, issuer: Issuer::new(params, key), ca_pem };
        let (cert, key) = pki.issue(&["localhost"], None);
        std::fs::write(pki.dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(pki.dir.path().join("server.key"), key).unwrap();
        pki
    }

    /// (certificate PEM, key PEM) for DNS names and an optional URI SAN.
    pub(crate) fn issue(&self, dns: &[&str], uri: Option<&str>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(uri) = uri {
            params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        }
        (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }

    pub(crate) fn client(&self, spiffe: &str) -> Identity {
        let (cert, key) = self.issue(&[], Some(spiffe));
        Identity::from_pem(cert, key)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_tls(&self) -> tonic::transport::ServerTlsConfig {
        let security = transfer_guard::config::Security {
            tls: Some((self.path("server.pem"), self.path("server.key"))),
            client_ca: Some(self.path("ca.pem")),
            trust_domain: TRUST_DOMAIN.into(),
            token_public_key: None,
        };
        transfer_guard::app::trust(&security).unwrap().1.unwrap()
    }
}

/// Token keys for the tests: the server checks with the public half.
pub(crate) struct Tokens {
    signer: TokenSigner,
    pub(crate) public: String,
}

impl Tokens {
    pub(crate) fn new() -> Tokens {
        let (secret, public) = generate_key_pair().unwrap();
        Tokens { signer: TokenSigner::from_paserk(&secret).unwrap(), public }
    }

    pub(crate) fn for_(&self, role: Role, scope: &str, subject: &str) -> String {
        let until = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        self.signer.issue(&Principal::new(role, scope, subject), until).unwrap()
    }

    pub(crate) fn trust(&self) -> Trust {
        Trust::Enforced {
            trust_domain: TRUST_DOMAIN.into(),
            tokens: Some(TokenVerifier::from_paserk(&self.public).unwrap()),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            let value: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

pub(crate) type Authed = InterceptedService<Channel, Bearer>;

async fn channel(server: &TestServer, ca: Option<&str>, identity: Option<Identity>) -> Result<Channel, String> {
    let mut endpoint = Channel::from_shared(server.addr.clone()).unwrap();
    if let Some(ca) = ca {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

pub(crate) async fn with_token(server: &TestServer, ca: Option<&str>, token: Option<String>) -> Authed {
    InterceptedService::new(channel(server, ca, None).await.unwrap(), Bearer(token))
}

pub(crate) fn screening(c: &Authed) -> pb::screening_client::ScreeningClient<Authed> {
    pb::screening_client::ScreeningClient::new(c.clone())
}
pub(crate) fn alerts(c: &Authed) -> pb::alerts_client::AlertsClient<Authed> {
    pb::alerts_client::AlertsClient::new(c.clone())
}
fn watchlist(c: &Authed) -> pb::watchlist_client::WatchlistClient<Authed> {
    pb::watchlist_client::WatchlistClient::new(c.clone())
}
fn rules(c: &Authed) -> pb::rules_client::RulesClient<Authed> {
    pb::rules_client::RulesClient::new(c.clone())
}

fn code<T>(r: Result<T, Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

pub(crate) fn audit_lines(server: &TestServer) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(server.data.path().join("audit.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Waits until the audit trail has a line that `matches` (the writer flushes every ~10 ms).
pub(crate) async fn audited(server: &TestServer, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    for _ in 0..200 {
        if let Some(line) = audit_lines(server).into_iter().find(|l| matches(l)) {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no such audit record in {:#?}", audit_lines(server));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_names_callers_by_their_spiffe_id() {
    let pki = Pki::new();
    let tokens = Tokens::new();
    let extras = Extras { trust: tokens.trust(), tls: Some(pki.server_tls()), ..Extras::default() };
    let server = TestServer::start_trusted(extras, false, Approval::Automatic).await;
    let ca = Some(pki.ca_pem.as_str());
    let as_cert = |spiffe: &str| {
        let identity = pki.client(spiffe);
        let server = &server;
        async move { pb::screening_client::ScreeningClient::new(channel(server, ca, Some(identity)).await.unwrap()) }
    };

    // A teller of the bank screens that bank's transfers, and follows them.
    let mut teller = as_cert(&format!("spiffe://{TRUST_DOMAIN}/teller/{BANK}/t-07")).await;
    let held = teller.screen(seed_case("tls-seed")).await.unwrap().into_inner();
    assert_eq!(held.action, pb::Action::Hold as i32);
    let get = pb::GetTransferRequest { request_id: "tls-seed".into() };
    assert!(teller.get_transfer(get.clone()).await.is_ok());

    // ... but not another bank's.
    let mut other_bank = ordinary("tls-boc", "c-boc", "6222020000001111");
    other_bank.bank_id = "boc".into();
    let denied = teller.screen(other_bank).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("bank `boc`"), "{}", denied.message());
    let mut boc_teller = as_cert(&format!("spiffe://{TRUST_DOMAIN}/teller/boc/t-1")).await;
    assert_eq!(code(boc_teller.get_transfer(get).await), Code::PermissionDenied, "another bank's transfer");

    // An officer's certificate cannot screen.
    let mut officer = as_cert(&format!("spiffe://{TRUST_DOMAIN}/officer/{STATION}/officer-li")).await;
    let e = officer.screen(ordinary("tls-officer", "c-1", "6222020000002222")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("Screen needs the role teller"), "{}", e.message());

    // Another trust domain, no SPIFFE id, a role outside the table: unauthenticated.
    for (spiffe, why) in [
        (Some("spiffe://other.test/teller/psbc/t-07".to_string()), "trust domain"),
        (None, "no URI SAN"),
        (Some(format!("spiffe://{TRUST_DOMAIN}/superuser/me")), "role is not"),
    ] {
        let (cert, key) = pki.issue(&[], spiffe.as_deref());
        let c = channel(&server, ca, Some(Identity::from_pem(cert, key))).await.unwrap();
        let e = pb::screening_client::ScreeningClient::new(c).screen(seed_case("tls-x")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{spiffe:?}: {e:?}");
        assert!(e.message().contains(why), "{}", e.message());
    }

    // A certificate from another CA does not get through the handshake.
    let stranger = Pki::new();
    let identity = stranger.client(&format!("spiffe://{TRUST_DOMAIN}/teller/{BANK}/t-07"));
    let refused = match channel(&server, ca, Some(identity)).await {
        Err(_) => true,
        Ok(c) => pb::screening_client::ScreeningClient::new(c).screen(seed_case("tls-y")).await.is_err(),
    };
    assert!(refused, "a certificate from an unknown CA was accepted");

    // Neither certificate nor token: unauthenticated. Health needs neither.
    let anonymous = channel(&server, ca, None).await.unwrap();
    let e = pb::screening_client::ScreeningClient::new(anonymous.clone()).screen(seed_case("tls-z")).await;
    assert_eq!(code(e), Code::Unauthenticated);
    let health = tonic_health::pb::health_client::HealthClient::new(anonymous)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // Every refusal is counted and audited, naming the caller.
    let m = scrape(&server.metrics_addr);
    assert!(value(&m, "transfer_guard_denied_total{method=\"Screen\",reason=\"scope\"}") >= 1.0, "{m}");
    assert!(value(&m, "transfer_guard_denied_total{method=\"Screen\",reason=\"unauthenticated\"}") >= 3.0);
    let denial = audited(&server, |l| l["kind"] == "denied" && l["reason"] == "role").await;
    assert_eq!(denial["by"], format!("officer/{STATION}/officer-li"));
    let decision = audited(&server, |l| l["kind"] == "decision" && l["request_id"] == "tls-seed").await;
    assert_eq!(decision["by"], format!("teller/{BANK}/t-07"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_name_people_and_officers_act_only_for_their_station_as_themselves() {
    let tokens = Tokens::new();
    let extras = Extras { trust: tokens.trust(), ..Extras::default() };
    let server = TestServer::start_trusted(extras, false, Approval::Automatic).await;
    let teller = with_token(&server, None, Some(tokens.for_(Role::Teller, BANK, "t-07"))).await;
    let held = screening(&teller).screen(seed_case("tok-seed")).await.unwrap().into_inner();
    assert_eq!(held.station_id, STATION);

    let li = with_token(&server, None, Some(tokens.for_(Role::Officer, STATION, "officer-li"))).await;
    let wang = with_token(&server, None, Some(tokens.for_(Role::Officer, "jiangmen-ps", "officer-wang"))).await;
    let claim = |officer: &str| pb::ClaimAlertRequest { alert_id: held.alert_id.clone(), officer_id: officer.into() };

    // Another station's officer cannot see, claim or resolve it.
    let e = alerts(&wang).claim_alert(claim("officer-wang")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains(&format!("station `{STATION}`")), "{}", e.message());
    let listed = alerts(&wang).list_alerts(pb::ListAlertsRequest::default()).await.unwrap().into_inner();
    assert!(listed.alerts.is_empty(), "an officer's list is their own station's");
    let watch = pb::WatchAlertsRequest { station_ids: vec![STATION.into()], after_cursor: 0 };
    assert_eq!(code(alerts(&wang).watch_alerts(watch.clone()).await), Code::PermissionDenied);

    // The officer id in the body must be the caller's own.
    let e = alerts(&li).claim_alert(claim("officer-wang")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("officer_id"), "{}", e.message());

    let listed = alerts(&li).list_alerts(pb::ListAlertsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.alerts.len(), 1);
    assert!(alerts(&li).watch_alerts(watch).await.is_ok());
    alerts(&li).claim_alert(claim("officer-li")).await.unwrap();
    let resolve = pb::ResolveAlertRequest {
        alert_id: held.alert_id.clone(),
        officer_id: "officer-li".into(),
        outcome: pb::Outcome::Dissuaded as i32,
        hold_decision: pb::HoldDecision::Block as i32,
        note: "劝阻成功".into(),
    };
    alerts(&li).resolve_alert(resolve).await.unwrap();
    let resolved = audited(&server, |l| l["kind"] == "alert" && l["event"] == "resolved").await;
    assert_eq!(resolved["by"], format!("officer/{STATION}/officer-li"));

    // Watchlist: added as the caller's station, removed only by it or an admin.
    let entry = |station: &str| pb::WatchlistEntry {
        account: "6222000055556666".into(),
        issuer_station_id: station.into(),
        reason: "涉诈收款账户".into(),
        ..Default::default()
    };
    assert_eq!(code(watchlist(&li).upsert_entry(entry("jiangmen-ps")).await), Code::PermissionDenied);
    watchlist(&li).upsert_entry(entry(STATION)).await.unwrap();
    assert_eq!(code(watchlist(&wang).upsert_entry(entry("jiangmen-ps")).await), Code::PermissionDenied, "overwrite");
    let remove = pb::RemoveEntryRequest { account: "6222 0000 5555 6666".into() };
    assert_eq!(code(watchlist(&wang).remove_entry(remove.clone()).await), Code::PermissionDenied);
    let admin = with_token(&server, None, Some(tokens.for_(Role::Admin, "", "ops-zhao"))).await;
    assert!(watchlist(&admin).remove_entry(remove).await.unwrap().into_inner().removed);

    // Expired, forged, garbled or missing tokens: unauthenticated.
    let until = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    let expired = tokens.signer.issue(&Principal::new(Role::Officer, STATION, "officer-li"), until).unwrap();
    let forged = Tokens::new().for_(Role::Admin, "", "mallory");
    for token in [Some(expired), Some(forged), Some("v4.public.garbage".to_string()), None] {
        let c = with_token(&server, None, token.clone()).await;
        let e = alerts(&c).list_alerts(pb::ListAlertsRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}");
    }
    server.stop().await;
}

/// Who may call what: the table in docs/security.md, written out again here so
/// that a change to the code's table fails this test until the docs agree.
const TABLE: &[(&str, &[&str])] = &[
    ("Screen", &["teller"]),
    ("RecordEvent", &["system"]),
    ("GetTransfer", &["teller", "system"]),
    ("WatchTransfer", &["teller"]),
    ("WatchAlerts", &["officer"]),
    ("ListAlerts", &["officer"]),
    ("ClaimAlert", &["officer"]),
    ("ResolveAlert", &["officer"]),
    ("UpsertEntry", &["officer"]),
    ("RemoveEntry", &["officer", "admin"]),
    ("ListEntries", &["officer", "analyst", "admin"]),
    ("GetRuleset", &["teller", "system", "officer", "analyst", "admin"]),
    ("ReloadRules", &["analyst"]),
    ("DryRun", &["analyst"]),
    ("ProposeRules", &["analyst"]),
    ("ApproveRules", &["analyst"]),
];

/// Calls `method` as whoever `c` carries, with a request that passes every
/// check but the caller's; returns the code.
async fn call(method: &str, c: &Authed, n: usize) -> Code {
    let id = format!("table-{method}-{n}");
    match method {
        "Screen" => code(screening(c).screen(ordinary(&id, &format!("c-{n}"), "6222020000003333")).await),
        "RecordEvent" => {
            let event = pb::RecordEventRequest {
                event_id: id,
                bank_id: BANK.into(),
                event: Some(pb::record_event_request::Event::TransferCancelled(pb::TransferCancelled {
                    request_id: "table-screened".into(),
                })),
            };
            code(screening(c).record_event(event).await)
        }
        "GetTransfer" => {
            code(screening(c).get_transfer(pb::GetTransferRequest { request_id: "table-screened".into() }).await)
        }
        "WatchTransfer" => {
            code(screening(c).watch_transfer(pb::GetTransferRequest { request_id: "table-screened".into() }).await)
        }
        "WatchAlerts" => code(
            alerts(c).watch_alerts(pb::WatchAlertsRequest { station_ids: vec![STATION.into()], after_cursor: 0 }).await,
        ),
        "ListAlerts" => code(alerts(c).list_alerts(pb::ListAlertsRequest::default()).await),
        "ClaimAlert" => code(
            alerts(c)
                .claim_alert(pb::ClaimAlertRequest {
                    alert_id: "no-such-alert".into(),
                    officer_id: "officer-li".into(),
                })
                .await,
        ),
        "ResolveAlert" => code(
            alerts(c)
                .resolve_alert(pb::ResolveAlertRequest {
                    alert_id: "no-such-alert".into(),
                    officer_id: "officer-li".into(),
                    outcome: pb::Outcome::Dissuaded as i32,
                    ..Default::default()
                })
                .await,
        ),
        "UpsertEntry" => code(
            watchlist(c)
                .upsert_entry(pb::WatchlistEntry {
                    account: format!("62220000{n:08}"),
                    issuer_station_id: STATION.into(),
                    reason: "table".into(),
                    ..Default::default()
                })
                .await,
        ),
        "RemoveEntry" => {
            code(watchlist(c).remove_entry(pb::RemoveEntryRequest { account: "62220000999999".into() }).await)
        }
        "ListEntries" => code(watchlist(c).list_entries(pb::ListEntriesRequest {}).await),
        "GetRuleset" => code(rules(c).get_ruleset(pb::GetRulesetRequest {}).await),
        "ReloadRules" => code(rules(c).reload_rules(pb::ReloadRulesRequest {}).await),
        "DryRun" => code(rules(c).dry_run(seed_case(&id)).await),
        "ProposeRules" => code(rules(c).propose_rules(pb::ProposeRulesRequest {}).await),
        "ApproveRules" => code(rules(c).approve_rules(pb::ApproveRulesRequest { version: "sha256:none".into() }).await),
        other => panic!("no call for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_as_every_role() {
    // The test's table covers every method the server has.
    let methods: Vec<&str> = transfer_guard::auth::Method::ALL.iter().map(|m| m.name()).collect();
    let listed: Vec<&str> = TABLE.iter().map(|(m, _)| *m).collect();
    assert_eq!(methods, listed, "the table here and the code's list of methods differ");

    let tokens = Tokens::new();
    let extras = Extras { trust: tokens.trust(), ..Extras::default() };
    let server = TestServer::start_trusted(extras, false, Approval::Automatic).await;
    let teller = with_token(&server, None, Some(tokens.for_(Role::Teller, BANK, "t-07"))).await;
    screening(&teller).screen(ordinary("table-screened", "c-table", "6222020000004444")).await.unwrap();

    let callers = [
        ("teller", Some(tokens.for_(Role::Teller, BANK, "t-07"))),
        ("system", Some(tokens.for_(Role::System, BANK, "core-banking"))),
        ("officer", Some(tokens.for_(Role::Officer, STATION, "officer-li"))),
        ("analyst", Some(tokens.for_(Role::Analyst, "", "analyst-zhang"))),
        ("admin", Some(tokens.for_(Role::Admin, "", "ops-zhao"))),
        ("nobody", None),
    ];
    let mut n = 0;
    let mut wrong = Vec::new();
    for (method, allowed) in TABLE {
        for (role, token) in &callers {
            n += 1;
            let c = with_token(&server, None, token.clone()).await;
            let got = call(method, &c, n).await;
            let expected = if *role == "nobody" {
                "UNAUTHENTICATED"
            } else if allowed.contains(role) {
                "let through"
            } else {
                "PERMISSION_DENIED"
            };
            let ok = match expected {
                "UNAUTHENTICATED" => got == Code::Unauthenticated,
                "PERMISSION_DENIED" => got == Code::PermissionDenied,
                _ => !matches!(got, Code::Unauthenticated | Code::PermissionDenied),
            };
            if !ok {
                wrong.push(format!("{method} as {role}: expected {expected}, got {got:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ruleset_needs_a_second_analyst() {
    let tokens = Tokens::new();
    let extras = Extras { trust: tokens.trust(), ..Extras::default() };
    let server = TestServer::start_trusted(extras, false, Approval::Required).await;
    let zhang = with_token(&server, None, Some(tokens.for_(Role::Analyst, "", "analyst-zhang"))).await;
    let li = with_token(&server, None, Some(tokens.for_(Role::Analyst, "", "analyst-li"))).await;
    let running = rules(&zhang).get_ruleset(pb::GetRulesetRequest {}).await.unwrap().into_inner();
    assert_eq!(running.approval, "required");

    edit(server.rules.path(), "amounts.toml", "Amount from 50,000 to 200,000 CNY", "Amount from 50,000 CNY");
    // A reload only proposes; the running set stays.
    let reload = rules(&zhang).reload_rules(pb::ReloadRulesRequest {}).await.unwrap().into_inner();
    assert!(!reload.reloaded);
    assert_eq!(reload.version, running.version);
    assert!(reload.errors[0].contains("approval required"), "{:?}", reload.errors);
    let proposal = rules(&zhang).propose_rules(pb::ProposeRulesRequest {}).await.unwrap().into_inner();
    assert!(proposal.proposed, "{proposal:?}");
    assert_ne!(proposal.version, running.version);
    assert_eq!(proposal.proposed_by, "analyst/analyst-zhang");
    let info = rules(&li).get_ruleset(pb::GetRulesetRequest {}).await.unwrap().into_inner();
    assert_eq!(info.version, running.version, "not live before approval");
    assert_eq!(info.pending.unwrap().version, proposal.version);

    // The proposer cannot approve; nor can anyone approve a version that is not waiting.
    let own = rules(&zhang).approve_rules(pb::ApproveRulesRequest { version: proposal.version.clone() }).await;
    assert_eq!(code(own), Code::PermissionDenied);
    let other = rules(&li).approve_rules(pb::ApproveRulesRequest { version: running.version.clone() }).await;
    assert_eq!(code(other), Code::FailedPrecondition);
    let officer = with_token(&server, None, Some(tokens.for_(Role::Officer, STATION, "officer-li"))).await;
    let by_officer = rules(&officer).approve_rules(pb::ApproveRulesRequest { version: proposal.version.clone() }).await;
    assert_eq!(code(by_officer), Code::PermissionDenied);

    let approved = rules(&li)
        .approve_rules(pb::ApproveRulesRequest { version: proposal.version.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(approved.reloaded);
    let info = rules(&li).get_ruleset(pb::GetRulesetRequest {}).await.unwrap().into_inner();
    assert_eq!(info.version, proposal.version);
    assert!(info.pending.is_none());

    let proposed = audited(&server, |l| l["kind"] == "rules_proposed").await;
    assert_eq!(proposed["by"], "analyst/analyst-zhang");
    let approval = audited(&server, |l| l["kind"] == "rules_approved" && l["approved"] == true).await;
    assert_eq!(
        (approval["by"].as_str(), approval["proposed_by"].as_str()),
        (Some("analyst/analyst-li"), Some("analyst/analyst-zhang"))
    );
    audited(&server, |l| l["kind"] == "rules_approved" && l["approved"] == false && l["by"] == "analyst/analyst-zhang")
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_gets_the_fail_mode_never_a_hang() {
    let limits = Limits { commit_timeout: Duration::from_millis(300), ..Limits::default() };
    let server = TestServer::start_trusted(Extras { limits, ..Extras::default() }, true, Approval::Automatic).await;
    let mut client = server.screening().await;
    let store = server.store.clone().expect("durable");
    store.stall_commits(true);

    // Above the floor (5,000 CNY): HOLD; below: WARN; each says why.
    let mut large = ordinary("stall-large", "c-stall-1", "6222020000005555");
    large.amount_minor = 800_000;
    let answer = client.screen(large).await.unwrap().into_inner();
    assert_eq!(answer.action, pb::Action::Hold as i32);
    assert!(answer.hits.iter().any(|h| h.rule_id == "fail-safe" && h.reason_zh.contains("暂停")), "{answer:?}");
    let mut small = ordinary("stall-small", "c-stall-2", "6222020000006666");
    small.amount_minor = 20_000;
    let answer = client.screen(small).await.unwrap().into_inner();
    assert_eq!(answer.action, pb::Action::Warn as i32);
    // The engine's own stricter answer stands.
    let answer = client.screen(seed_case("stall-seed")).await.unwrap().into_inner();
    assert!(answer.action >= pb::Action::Hold as i32);

    let m = scrape(&server.metrics_addr);
    assert_eq!(value(&m, "transfer_guard_degraded"), 1.0, "{m}");
    assert!(value(&m, "transfer_guard_fail_mode_answers_total{answer=\"HOLD\"}") >= 1.0, "{m}");
    assert!(value(&m, "transfer_guard_fail_mode_answers_total{answer=\"WARN\"}") >= 1.0, "{m}");

    // Recovered: answers are the engine's again, and the gauge clears.
    store.stall_commits(false);
    let answer = client.screen(ordinary("after-stall", "c-stall-3", "6222020000007777")).await.unwrap().into_inner();
    assert_eq!(answer.action, pb::Action::Allow as i32);
    assert!(!answer.hits.iter().any(|h| h.rule_id == "fail-safe"));
    assert_eq!(value(&scrape(&server.metrics_addr), "transfer_guard_degraded"), 0.0);
    audited(&server, |l| l["kind"] == "degraded" && l["degraded"] == true).await;
    audited(&server, |l| l["kind"] == "degraded" && l["degraded"] == false).await;
    audited(&server, |l| l["kind"] == "fail_mode" && l["request_id"] == "stall-large").await;
    server.stop().await;

    // fail_mode = unavailable: the teller's system is told to retry.
    let limits =
        Limits { commit_timeout: Duration::from_millis(200), fail_mode: FailMode::Unavailable, ..Limits::default() };
    let server = TestServer::start_trusted(Extras { limits, ..Extras::default() }, true, Approval::Automatic).await;
    server.store.clone().unwrap().stall_commits(true);
    let e = server.screening().await.screen(ordinary("stall-u", "c-stall-4", "6222020000008888")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    server.store.clone().unwrap().stall_commits(false);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_slots_screens_are_turned_away_at_once_and_officers_still_get_through() {
    let limits = Limits {
        screens_in_flight: 1,
        screen_queue_wait: Duration::from_millis(1),
        commit_timeout: Duration::from_secs(5),
        watchers_per_station: 1,
        max_message_bytes: 16 * 1024,
        ..Limits::default()
    };
    let server = TestServer::start_trusted(Extras { limits, ..Extras::default() }, true, Approval::Automatic).await;
    let store = server.store.clone().unwrap();
    store.stall_commits(true);
    // One screen takes the only slot, waiting on the stalled disk.
    let mut first = server.screening().await;
    let busy = tokio::spawn(async move { first.screen(ordinary("slot-1", "c-slot-1", "6222020000001212")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e = server.screening().await.screen(ordinary("slot-2", "c-slot-2", "6222020000001313")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Officers' calls and health have their own budget.
    server.alerts().await.list_alerts(pb::ListAlertsRequest::default()).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(server.channel().await)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    assert!(health.is_ok());
    store.stall_commits(false);
    assert!(busy.await.unwrap().is_ok());
    let m = scrape(&server.metrics_addr);
    assert!(value(&m, "transfer_guard_shed_total{method=\"Screen\",why=\"busy\"}") >= 1.0, "{m}");

    // One WatchAlerts stream per station here; the place is given back when it ends.
    let watch = pb::WatchAlertsRequest { station_ids: vec![STATION.into()], after_cursor: 0 };
    let stream = server.alerts().await.watch_alerts(watch.clone()).await.unwrap();
    assert_eq!(code(server.alerts().await.watch_alerts(watch.clone()).await), Code::ResourceExhausted);
    drop(stream);
    let mut again = Code::ResourceExhausted;
    for _ in 0..100 {
        again = code(server.alerts().await.watch_alerts(watch.clone()).await);
        if again == Code::Ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, Code::Ok);

    // A message over the size limit is refused, and the server goes on.
    let mut huge = ordinary("huge", "c-huge", "6222020000001414");
    huge.observations = vec![1; 20_000];
    let e = server.screening().await.screen(huge).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(server.screening().await.screen(ordinary("after-huge", "c-huge", "6222020000001515")).await.is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_makes_keys_and_issues_tokens_the_server_accepts() {
    let keys = tempfile::tempdir().unwrap();
    let out = keys.path().to_str().unwrap();
    let made = transfer_guard(&["token", "keygen", "--out", out]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.path().join("token-secret.paserk")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the secret key is readable by its owner only");
    }
    let secret = keys.path().join("token-secret.paserk");
    let issued = transfer_guard(&[
        "token",
        "issue",
        "--key",
        secret.to_str().unwrap(),
        "--role",
        "officer",
        "--station",
        STATION,
        "--subject",
        "officer-li",
        "--ttl",
        "12h",
    ]);
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_string();
    let no_station =
        transfer_guard(&["token", "issue", "--key", secret.to_str().unwrap(), "--role", "officer", "--subject", "x"]);
    assert!(!no_station.status.success());

    let public = std::fs::read_to_string(keys.path().join("token-public.paserk")).unwrap();
    let trust = Trust::Enforced {
        trust_domain: TRUST_DOMAIN.into(),
        tokens: Some(TokenVerifier::from_paserk(&public).unwrap()),
    };
    let server = TestServer::start_trusted(Extras { trust, ..Extras::default() }, false, Approval::Automatic).await;
    let officer = with_token(&server, None, Some(token)).await;
    assert!(alerts(&officer).list_alerts(pb::ListAlertsRequest::default()).await.is_ok());
    assert_eq!(code(screening(&officer).screen(seed_case("cli-token")).await), Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officers_can_have_a_listener_and_runtime_of_their_own() {
    let officers = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let officer_addr = format!("http://{}", officers.local_addr().unwrap());
    let extras = Extras { officer_listener: Some(officers), ..Extras::default() };
    let server = TestServer::start_trusted(extras, false, Approval::Automatic).await;
    let held = server.screening().await.screen(seed_case("officer-port")).await.unwrap().into_inner();

    let officer = Channel::from_shared(officer_addr).unwrap().connect().await.unwrap();
    let mut alerts = pb::alerts_client::AlertsClient::new(officer.clone());
    let claim = pb::ClaimAlertRequest { alert_id: held.alert_id.clone(), officer_id: "officer-li".into() };
    alerts.claim_alert(claim).await.unwrap();
    let resolve = pb::ResolveAlertRequest {
        alert_id: held.alert_id.clone(),
        officer_id: "officer-li".into(),
        outcome: pb::Outcome::Dissuaded as i32,
        hold_decision: pb::HoldDecision::Block as i32,
        note: String::new(),
    };
    alerts.resolve_alert(resolve).await.unwrap();
    let status = server
        .screening()
        .await
        .get_transfer(pb::GetTransferRequest { request_id: "officer-port".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, pb::TransferState::Blocked as i32, "the teller sees the officer's decision");
    let health = tonic_health::pb::health_client::HealthClient::new(officer.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    assert!(health.is_ok());
    // Tellers' traffic stays on the main listener.
    let screened = pb::screening_client::ScreeningClient::new(officer).screen(seed_case("officer-port-2")).await;
    assert_eq!(code(screened), Code::Unimplemented);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_speaks_mutual_tls_and_tokens() {
    let pki = Pki::new();
    let tokens = Tokens::new();
    let extras = Extras { trust: tokens.trust(), tls: Some(pki.server_tls()), ..Extras::default() };
    let server = TestServer::start_trusted(extras, false, Approval::Automatic).await;
    let (cert, key) = pki.issue(&[], Some(&format!("spiffe://{TRUST_DOMAIN}/analyst/analyst-zhang")));
    std::fs::write(pki.path("analyst.pem"), cert).unwrap();
    std::fs::write(pki.path("analyst.key"), key).unwrap();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            transfer_guard(&args)
        })
    };
    let (addr, ca) = (server.addr.clone(), pki.path("ca.pem").display().to_string());

    // A certificate naming an analyst: the ruleset is shown.
    let shown = run(vec![
        "rules".into(),
        "show".into(),
        "--addr".into(),
        addr.clone(),
        "--ca".into(),
        ca.clone(),
        "--cert".into(),
        pki.path("analyst.pem").display().to_string(),
        "--key".into(),
        pki.path("analyst.key").display().to_string(),
    ])
    .await
    .unwrap();
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    assert!(String::from_utf8_lossy(&shown.stdout).contains("sha256:"));

    // A token naming an officer, over TLS: the station's alerts; screening is refused.
    let token = tokens.for_(Role::Officer, STATION, "officer-li");
    let listed = run(vec![
        "alerts".into(),
        "list".into(),
        "--addr".into(),
        addr.clone(),
        "--ca".into(),
        ca.clone(),
        "--token".into(),
        token.clone(),
    ])
    .await
    .unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let reload = run(vec![
        "rules".into(),
        "reload".into(),
        "--addr".into(),
        addr.clone(),
        "--ca".into(),
        ca.clone(),
        "--token".into(),
        token,
    ])
    .await
    .unwrap();
    assert!(!reload.status.success());
    assert!(
        String::from_utf8_lossy(&reload.stderr).contains("PermissionDenied"),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );

    // Neither: refused, and said so.
    let anonymous = run(vec!["rules".into(), "show".into(), "--addr".into(), addr, "--ca".into(), ca]).await.unwrap();
    assert!(!anonymous.status.success());
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("Unauthenticated"));
    server.stop().await;
}
