//! The baseline `just bench` measures callplane against: the least a correct Twilio webhook
//! endpoint does. actix-web, the form parsed, the signature checked over the public URL (the same
//! function callplane uses), one log line per request to a file through a non-blocking, lossless
//! writer, TwiML back. No database, no middleware, no routing table.
//!
//! Usage: `bench-baseline <bind> <public base URL> <auth token> <log dir>`.

use actix_web::{App, HttpResponse, HttpServer, web};
use callplane_plugin_twilio::signature::{self, Outcome};

struct Config {
    url: String,
    key: signature::AuthKey,
}

const TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>Thank you for calling. Please hold while we connect you.</Say></Response>"#;

async fn incoming_call(
    req: actix_web::HttpRequest,
    form: web::Form<Vec<(String, String)>>,
    config: web::Data<Config>,
) -> HttpResponse {
    let param = |name: &str| form.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
    tracing::info!(
        "[TWILIO][INBOUND] hit path=/webhook/incoming_call call_sid={} from={} to={}",
        param("CallSid"),
        param("From"),
        param("To")
    );
    let header = req.headers().get("x-twilio-signature").and_then(|v| v.to_str().ok());
    match signature::validate_with(&config.key, &config.url, form.iter(), None, header) {
        Outcome::Valid => HttpResponse::Ok().content_type("text/xml; charset=utf-8").body(TWIML),
        _ => HttpResponse::Forbidden().finish(),
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bind, base, token, log_dir] = args.as_slice() else {
        anyhow::bail!("usage: bench-baseline <bind> <public base URL> <auth token> <log dir>");
    };
    let file = tracing_appender::rolling::never(log_dir, "baseline.log");
    let (writer, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(file);
    tracing_subscriber::fmt().with_writer(writer).with_ansi(false).init();
    let config = web::Data::new(Config {
        url: format!("{base}/webhook/incoming_call"),
        key: signature::AuthKey::new(token),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(config.clone())
            .route("/webhook/incoming_call", web::post().to(incoming_call))
            .route("/readyz", web::get().to(HttpResponse::Ok))
    })
    .bind(bind.as_str())?
    .run();
    println!("baseline ready bind={bind}");
    server.await?;
    Ok(())
}
