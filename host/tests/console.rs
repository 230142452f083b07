//! The operator console in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol (chromiumoxide) against the real binary on SQLite with a fake Twilio REST API.
//!
//! The scenario an operator lives: a signed-out visit lands on sign-in; signed in, the live list
//! is open when `callplane simulate` sends a signed inbound webhook, and the call's row appears
//! without a reload; its page shows the timeline, the verdict and the TwiML; a call placed from
//! the form shows `twilio_ok`; a caller name with markup stays text; the page fits 360 px; a
//! viewer without the `calls` page gets 403. A screenshot of each step is saved under
//! `target/tmp/console-browser/`.
//!
//! The browser is `TEST_CHROMIUM` (`.ci/run` installs Debian's `chromium` and sets it), else
//! `/usr/bin/chromium` when present; without one the test says SKIPPED and passes.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callplane_e2e::harness::{Sandbox, Server};
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::page::{Page, ScreenshotParams};
use futures_util::StreamExt as _;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_callplane");
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "console-browser-token";
const NUMBER: &str = "+972501234567";
const AGENT: (&str, &str, &str) = ("agent@dental.example", "agent", "agent password 123");
const VIEWER: (&str, &str) = ("viewer@dental.example", "viewer password 123");
const INBOUND: &str = "CAb10b10b10b10b10b10b10b10b10b10b1";
const MARKUP: &str = "CAb20b20b20b20b20b20b20b20b20b20b2";
/// A caller name that would run a script if it were ever rendered as HTML.
const HOSTILE_NAME: &str = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">Mallory";

/// The browser to drive, or `None` (the test skips) when there is none.
fn chromium() -> Option<PathBuf> {
    match std::env::var_os("TEST_CHROMIUM") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "TEST_CHROMIUM={} is not a file", path.display());
            Some(path)
        }
        None => Some(PathBuf::from("/usr/bin/chromium")).filter(|p| p.is_file()),
    }
}

/// The deployment under test: one instance whose public base URL is the address the browser uses
/// (so the session cookie's `Origin` check sees the page's own origin).
struct Console {
    sandbox: Sandbox,
    env: Vec<(String, String)>,
    public: String,
    server: Server,
}

impl Console {
    fn start() -> Self {
        let api = common::fake_twilio();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let public = format!("http://127.0.0.1:{port}");
        let bind = format!("127.0.0.1:{port}");
        let sandbox = Sandbox::new();
        let env: Vec<(String, String)> = [
            ("CALLPLANE_PUBLIC_BASE_URL", public.as_str()),
            ("CALLPLANE_BIND", &bind),
            ("TWILIO_ACCOUNT_SID", ACCOUNT),
            ("TWILIO_AUTH_TOKEN", TOKEN),
            ("TWILIO_API_BASE", &api),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        sandbox.bootstrap(Path::new(BIN), &pairs, NUMBER, AGENT);
        let viewer = sandbox.run_with_input(
            Path::new(BIN),
            &[
                "admin",
                "create-user",
                "--business",
                "1",
                "--email",
                VIEWER.0,
                "--role",
                "viewer",
            ],
            &pairs,
            &format!("{}\n", VIEWER.1),
        );
        assert_eq!(viewer.code, Some(0), "{}{}", viewer.stdout, viewer.stderr);
        let server = sandbox.serve(Path::new(BIN), &pairs);
        Self {
            sandbox,
            env,
            public,
            server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public)
    }

    /// `callplane simulate inbound`, as an operator runs it: a signed webhook to the public URL.
    fn simulate_inbound(&self, call_sid: &str) {
        let pairs: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = self.sandbox.run(
            Path::new(BIN),
            &["simulate", "inbound", "--to", NUMBER, "--call-sid", call_sid],
            &pairs,
        );
        assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("<Response>"), "{}", out.stdout);
    }
}

/// Where the screenshots go: `target/tmp/console-browser/`, emptied first.
fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-browser");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(page: &Page, dir: &Path, name: &str) {
    let path = dir.join(format!("{name}.png"));
    page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), &path)
        .await
        .unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// `expression` evaluated in the page, as JSON.
async fn eval(page: &Page, expression: &str) -> serde_json::Value {
    page.evaluate(expression)
        .await
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
        .into_value()
        .unwrap_or(serde_json::Value::Null)
}

/// Polls `expression` until it is `true` (20 s at most: the page refreshes every 3 s). While the
/// page navigates, evaluations fail (its context is gone): that is "not yet".
async fn until(page: &Page, what: &str, expression: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = page.evaluate(expression).await.ok().and_then(|v| v.into_value().ok());
        if value == Some(serde_json::Value::Bool(true)) {
            return;
        }
        if Instant::now() > deadline {
            let url = page.url().await.ok().flatten().unwrap_or_default();
            let text = eval(page, "document.body ? document.body.innerText : ''").await;
            panic!("{what}: not within 20 s (at {url}):\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(page: &Page, selector: &str) -> String {
    let expression = format!("(document.querySelector({selector:?}) || {{}}).innerText || ''");
    eval(page, &expression).await.as_str().unwrap_or_default().to_owned()
}

/// Clicks the field `selector` and types `text` into it, as a person does.
async fn type_into(page: &Page, selector: &str, text: &str) {
    let field = page.find_element(selector).await.unwrap();
    field.click().await.unwrap().type_str(text).await.unwrap();
}

async fn sign_in(page: &Page, console: &Console, email: &str, password: &str) {
    type_into(page, "#sign-in input[name=email]", email).await;
    type_into(page, "#sign-in input[name=password]", password).await;
    page.find_element("#sign-in button")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let live = console.url("/console/calls");
    until(
        page,
        "signed in, on the live list",
        &format!("location.href === {live:?}"),
    )
    .await;
}

#[test]
fn an_operator_watches_a_call_arrive_opens_it_and_places_one() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED the console browser test: no Chromium (set TEST_CHROMIUM; .ci/run installs Debian's chromium)"
        );
        return;
    };
    let console = Console::start();
    let profile = tempfile::tempdir().unwrap();
    let dir = shots();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let config = BrowserConfig::builder()
            .chrome_executable(chromium)
            .no_sandbox() // CI runs as root
            .new_headless_mode()
            .user_data_dir(profile.path())
            .window_size(1280, 900)
            .viewport(None)
            // Times must show in the browser's zone, not the server's (UTC).
            .env("TZ", "Asia/Jerusalem")
            .args([
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ])
            .build()
            .unwrap();
        let (mut browser, mut handler) = Browser::launch(config).await.unwrap();
        let events = tokio::spawn(async move { while handler.next().await.is_some() {} });

        // 1. Signed out: any console page sends the visitor to sign in.
        let page = browser.new_page(console.url("/console/calls")).await.unwrap();
        let expected = console.url("/console/login?next=%2Fconsole%2Fcalls");
        until(
            &page,
            "redirected to sign in",
            &format!("location.href === {expected:?}"),
        )
        .await;
        shot(&page, &dir, "01-signed-out-redirected-to-sign-in").await;

        // 2. Signed in: the live list, empty.
        sign_in(&page, &console, AGENT.0, AGENT.2).await;
        until(
            &page,
            "the empty list",
            "!!document.querySelector('#call-rows tr.empty')",
        )
        .await;
        shot(&page, &dir, "02-signed-in-live-list").await;

        // 3. A signed webhook from `callplane simulate`: the row appears, the page is not reloaded.
        eval(&page, "window.stillTheSamePage = true").await;
        console.simulate_inbound(INBOUND);
        let row = format!("tr[data-call={INBOUND:?}]");
        until(
            &page,
            "the new call's row",
            &format!("!!document.querySelector({row:?})"),
        )
        .await;
        assert_eq!(eval(&page, "window.stillTheSamePage === true").await, true, "reloaded");
        let cells = text_of(&page, &row).await;
        for part in ["inbound", "+15005550006", NUMBER, "ringing", "answered"] {
            assert!(cells.contains(part), "{part}: {cells}");
        }
        // Shown in the browser's zone (Asia/Jerusalem, UTC+2 in December), UTC on hover.
        let script = format!(
            "(e => {{ const d = new Date(e.getAttribute('datetime')); const p = n => String(n).padStart(2, '0'); \
             return [e.textContent, e.title, d.getTimezoneOffset(), p(d.getHours()) + ':' + p(d.getMinutes()), \
             p((d.getHours() + 11) % 12 + 1) + ':' + p(d.getMinutes()), p(d.getUTCHours()) + ':' + p(d.getUTCMinutes())]; }})\
             (document.querySelector('{row} time'))"
        );
        let time = eval(&page, &script).await;
        let text = |i: usize| time[i].as_str().unwrap().to_owned();
        let (shown, utc) = (text(0), text(1));
        assert_eq!(time[2], -120, "the browser runs in Asia/Jerusalem: {time}");
        assert!(utc.ends_with(" UTC") && utc.contains(&text(5)), "UTC on hover: {time}");
        assert!(
            shown.contains(&text(3)) || shown.contains(&text(4)),
            "the local hour and minute shown: {time}"
        );
        assert!(!shown.contains("UTC") && !shown.contains(&text(5)), "not the UTC time: {time}");
        assert!(
            eval(&page, "document.getElementById('live-status').innerText")
                .await
                .as_str()
                .unwrap()
                .starts_with("Live"),
            "the list says it is live"
        );
        shot(&page, &dir, "03-new-call-appeared-without-reload").await;

        // 4. The call's page: timeline, verdict, the TwiML answered.
        page.find_element(&format!("{row} a"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let call_url = console.url(&format!("/console/calls/{INBOUND}"));
        until(&page, "the call's page", &format!("location.href === {call_url:?}")).await;
        let verdict = text_of(&page, "dl.verdict").await;
        for part in [
            "reached us",
            "yes,",
            "/webhook/incoming_call",
            "signature",
            "valid (1 webhook)",
            "business 1",
        ] {
            assert!(verdict.contains(part), "{part}: {verdict}");
        }
        let timeline = text_of(&page, "ol.timeline").await;
        assert!(
            timeline.contains("POST /webhook/incoming_call signature=valid"),
            "{timeline}"
        );
        let twiml = text_of(&page, "pre.twiml").await;
        assert!(
            twiml.starts_with("<?xml") && twiml.contains("<Response>"),
            "the TwiML as text: {twiml}"
        );
        shot(&page, &dir, "04-call-timeline-and-verdict").await;

        // 5. Place a call through the fake Twilio: the new call's page fills in with twilio_ok.
        page.goto(console.url("/console/outbound")).await.unwrap();
        type_into(&page, "#outbound input[name=to]", "+15005550006").await;
        page.find_element("#outbound button")
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // The request's page, by its REQ id (it exists before Twilio's CallSid is on record).
        until(
            &page,
            "the placed call's page",
            r"/^\/console\/calls\/[0-9a-f]{8}$/.test(location.pathname)",
        )
        .await;
        until(
            &page,
            "the CallSid Twilio gave",
            &format!("document.querySelector('dl.summary').innerText.includes({:?})", common::PLACED),
        )
        .await;
        until(
            &page,
            "twilio_ok in the timeline",
            "document.querySelector('ol.timeline').innerText.includes('twilio_ok')",
        )
        .await;
        let verdict = text_of(&page, "dl.verdict").await;
        assert!(
            verdict.contains(&format!("accepted: call {} placed", common::PLACED)),
            "{verdict}"
        );
        shot(&page, &dir, "05-outbound-call-placed-twilio-ok").await;

        // 6. A caller name with markup stays text: nothing of it runs.
        let reply = common::post_signed(
            &console.server,
            &console.public,
            TOKEN,
            "/webhook/incoming_call",
            &[
                ("CallSid", MARKUP),
                ("From", "+15005550007"),
                ("To", NUMBER),
                ("CallStatus", "ringing"),
                ("Direction", "inbound"),
                ("CallerName", HOSTILE_NAME),
            ],
        )
        .unwrap();
        assert_eq!(reply.status, 200);
        page.goto(console.url(&format!("/console/calls/{MARKUP}")))
            .await
            .unwrap();
        until(&page, "the caller's name", "!!document.querySelector('dd.caller-name')").await;
        assert_eq!(text_of(&page, "dd.caller-name").await, HOSTILE_NAME);
        // Nothing ran. This holds while either defence does (escaping, or the policy blocking
        // inline scripts and handlers); the text, script and image checks test the escaping.
        assert_eq!(eval(&page, "typeof window.pwned").await, "undefined", "the markup ran");
        assert_eq!(
            eval(&page, "document.scripts.length").await,
            1,
            "only the console's script"
        );
        assert_eq!(eval(&page, "document.querySelectorAll('img').length").await, 0);
        shot(&page, &dir, "06-caller-name-markup-shown-as-text").await;

        // 7. 360 px wide: the list still fits, nothing scrolls sideways.
        page.execute(SetDeviceMetricsOverrideParams::new(360, 740, 2.0, true))
            .await
            .unwrap();
        page.goto(console.url("/console/calls")).await.unwrap();
        until(
            &page,
            "the list at 360 px",
            &format!("!!document.querySelector({row:?})"),
        )
        .await;
        let width = eval(&page, "document.documentElement.scrollWidth").await;
        assert!(width.as_i64().unwrap() <= 360, "wider than the screen: {width}");
        shot(&page, &dir, "07-live-list-at-360px").await;
        page.execute(SetDeviceMetricsOverrideParams::new(0, 0, 0.0, false))
            .await
            .unwrap();

        // 8. Signed out, then in as a viewer (no `calls` page): 403.
        page.find_element("#sign-out").await.unwrap().click().await.unwrap();
        until(&page, "signed out", "location.pathname === '/console/login'").await;
        sign_in(&page, &console, VIEWER.0, VIEWER.1).await;
        let status = eval(&page, "fetch('/console/calls').then(r => r.status)").await;
        assert_eq!(status, 403);
        let body = eval(&page, "document.body.innerText").await;
        assert!(body.as_str().unwrap().contains("\"forbidden\""), "{body}");
        shot(&page, &dir, "08-viewer-without-calls-page-403").await;

        browser.close().await.unwrap();
        browser.wait().await.unwrap();
        events.abort();
    });
}
