//! `callplane admin …`: bootstrap tenants and users without SQL.
//!
//! ```text
//! callplane admin create-business --name "Dental Care" --phone +972501234567
//! callplane admin create-user --business 1 --email dana@example.com --role owner   # password from stdin or a prompt
//! callplane admin grant-page --business 1 --role agent --page settings [--level read]
//! callplane admin list-businesses
//! callplane admin unlock --email dana@example.com        # lift a sign-in lock (or --client 203.0.113.7)
//! ```
//!
//! Passwords are never command-line arguments (they would land in shell history and `ps`).

use std::io::{BufRead, IsTerminal};

use callplane_plugin_api::{CommandContext, PluginCommand};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::store::{Store, StoreError};
use crate::{Level, PAGES, ROLES, is_e164, normalise_email, password, session, throttle_bucket};

/// What callers hear when a business has no media stream.
pub const DEFAULT_GREETING: &str = "Thank you for calling. Please hold while we connect you.";

#[derive(Debug, Parser)]
#[command(name = "admin", about = "Bootstrap tenants and users without SQL")]
struct AdminCli {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a business (tenant) with the default role → page grants.
    CreateBusiness {
        /// Display name.
        #[arg(long)]
        name: String,
        /// The E.164 number Twilio calls, e.g. +972501234567.
        #[arg(long)]
        phone: String,
        /// What callers hear when no media stream is configured.
        #[arg(long, default_value = DEFAULT_GREETING)]
        greeting: String,
        /// The business's media server: a wss:// URL (ws:// is refused: Twilio would refuse it).
        #[arg(long)]
        media_stream_url: Option<String>,
    },
    /// Create a user; the password is read from standard input, or prompted for on a terminal.
    CreateUser {
        /// The business id.
        #[arg(long)]
        business: i64,
        /// E-mail address (the login).
        #[arg(long)]
        email: String,
        /// owner, admin, agent or viewer.
        #[arg(long, value_parser = ROLES)]
        role: String,
    },
    /// Grant a page to a role in a business.
    GrantPage {
        /// The business id.
        #[arg(long)]
        business: i64,
        /// owner, admin, agent or viewer.
        #[arg(long, value_parser = ROLES)]
        role: String,
        /// calendar, calls, leads or settings.
        #[arg(long, value_parser = PAGES)]
        page: String,
        /// read (see only) or write (see and change).
        #[arg(long, value_enum, default_value_t = Level::Write)]
        level: Level,
    },
    /// List the businesses.
    ListBusinesses,
    /// Lift a sign-in lock: forget the failed logins of an account or of a client address.
    #[command(group(clap::ArgGroup::new("whom").required(true).multiple(true)))]
    Unlock {
        /// The account's e-mail address.
        #[arg(long, group = "whom")]
        email: Option<String>,
        /// The client's IP address (an IPv6 address unlocks its whole /64).
        #[arg(long, group = "whom")]
        client: Option<std::net::IpAddr>,
    },
}

/// `callplane admin …`.
pub const ADMIN: PluginCommand = PluginCommand {
    name: "admin",
    summary: "Bootstrap tenants and users without SQL: create-business, create-user, grant-page, list-businesses, unlock",
    definition: AdminCli::command,
    database: true,
    run: |ctx| Box::pin(run(ctx)),
};

fn store_error(e: StoreError) -> String {
    match e {
        StoreError::NotFound => "no such business".to_owned(),
        other => other.to_string(),
    }
}

async fn run(ctx: CommandContext) -> Result<(), String> {
    let cli = AdminCli::from_arg_matches(&ctx.matches).map_err(|e| e.to_string().trim_end().to_owned())?;
    let store = Store::new(ctx.db);
    match cli.command {
        AdminCommand::CreateBusiness {
            name,
            phone,
            greeting,
            media_stream_url,
        } => {
            let name = name.trim();
            if name.is_empty() || name.len() > 200 {
                return Err("--name must be 1–200 characters".to_owned());
            }
            if !is_e164(&phone) {
                return Err(format!(
                    "--phone {phone:?} is not an E.164 number such as +972501234567"
                ));
            }
            if greeting.trim().is_empty() || greeting.len() > 1000 {
                return Err("--greeting must be 1–1000 characters".to_owned());
            }
            if let Some(url) = &media_stream_url {
                let parsed = url::Url::parse(url).ok().filter(|u| u.host_str().is_some());
                match parsed.as_ref().map(url::Url::scheme) {
                    Some("wss") => {}
                    Some("ws") => {
                        return Err(format!(
                            "--media-stream-url {url:?} is ws://: Twilio refuses unencrypted media streams (error 31922); serve the media server over TLS and give its wss:// URL"
                        ));
                    }
                    _ => return Err(format!("--media-stream-url {url:?} is not a wss:// URL")),
                }
            }
            let id = store
                .create_business(
                    name,
                    &phone,
                    greeting.trim(),
                    media_stream_url.as_deref(),
                    session::now(),
                )
                .await
                .map_err(store_error)?;
            println!("created business id={id} name={name:?} phone={phone}");
        }
        AdminCommand::CreateUser { business, email, role } => {
            let email = normalise_email(&email).ok_or_else(|| format!("--email {email:?} is not an e-mail address"))?;
            store.business(business).await.map_err(store_error)?;
            let secret = read_password(&email)?;
            crate::handlers::check_password(&secret).map_err(|e| e.message().to_owned())?;
            let hash = password::hash(&secret);
            let user = store
                .create_user(business, &email, &hash, &role, session::now())
                .await
                .map_err(store_error)?;
            println!(
                "created user id={} email={} role={} business={}",
                user.id, user.email, user.role, business
            );
        }
        AdminCommand::GrantPage {
            business,
            role,
            page,
            level,
        } => {
            store
                .grant_page(business, &role, &page, level)
                .await
                .map_err(store_error)?;
            let grants = store.page_levels(business, &role).await.map_err(store_error)?;
            let pages: Vec<&str> = grants.iter().map(|(p, _)| p.as_str()).collect();
            let writable: Vec<&str> = grants
                .iter()
                .filter(|(_, l)| *l == Level::Write)
                .map(|(p, _)| p.as_str())
                .collect();
            println!(
                "business={business} role={role} pages={} write={}",
                pages.join(","),
                writable.join(",")
            );
        }
        AdminCommand::Unlock { email, client } => {
            let mut subjects = Vec::new();
            if let Some(email) = email {
                let email =
                    normalise_email(&email).ok_or_else(|| format!("--email {email:?} is not an e-mail address"))?;
                subjects.push(("account", email));
            }
            if let Some(ip) = client {
                subjects.push(("client", throttle_bucket(ip)));
            }
            for (scope, subject) in subjects {
                let forgotten = store.unlock(scope, &subject).await.map_err(store_error)?;
                println!("unlocked {scope}={subject} failures_forgotten={forgotten}");
            }
        }
        AdminCommand::ListBusinesses => {
            let businesses = store.list_businesses().await.map_err(store_error)?;
            println!("ID  PHONE            NAME");
            for b in businesses {
                println!("{:<3} {:<16} {}", b.id, b.phone_number, b.name);
            }
        }
    }
    Ok(())
}

/// The new user's password: prompted twice (without echo) on a terminal, else the first line of
/// standard input.
fn read_password(email: &str) -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {email}: ")).map_err(|e| e.to_string())?;
        let second = rpassword::prompt_password("Repeat the password: ").map_err(|e| e.to_string())?;
        if first != second {
            return Err("the passwords differ".to_owned());
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            return Err("no password on standard input (pipe it in, e.g. `printf '%s\\n' \"$PW\" | callplane admin create-user …`)".to_owned());
        }
        Ok(password)
    }
}
