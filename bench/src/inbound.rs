//! A signed inbound call, as Twilio sends it: how the media and console benchmarks put calls in
//! the server they measure.

use anyhow::bail;
use callplane_plugin_twilio::signature;

/// Posts the `incoming_call` webhook of `call_sid` to `to` at `base`, signed with `token` over
/// `base` (the server's public base URL); fails unless it is answered 2xx.
pub(crate) async fn call(
    client: &awc::Client,
    base: &str,
    token: &str,
    to: &str,
    call_sid: &str,
) -> anyhow::Result<()> {
    let url = format!("{base}/webhook/incoming_call");
    let params = [
        ("CallSid", call_sid),
        ("From", "+14155550123"),
        ("To", to),
        ("CallStatus", "ringing"),
    ];
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let res = client
        .post(&url)
        .insert_header(("x-twilio-signature", signature::compute(token, &url, params)))
        .content_type("application/x-www-form-urlencoded")
        .send_body(body)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !res.status().is_success() {
        bail!("the webhook of {call_sid} answered {}", res.status());
    }
    Ok(())
}
