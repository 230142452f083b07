//! TwiML answers, XML-escaped with `quick-xml`.

use actix_web::web::Bytes;
use quick_xml::escape::escape;

const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// What callers of an unknown number hear before the line hangs up.
pub const UNKNOWN_NUMBER: &str = "We are sorry, this number is not in service. Goodbye.";
/// What callers hear when the business cannot be looked up (database down, nothing cached).
pub const FALLBACK_GREETING: &str =
    "Thank you for calling. We cannot take your call right now; please try again shortly.";

/// What a caller hears when the relayed media stream ends before the call does (the media server
/// is down, refused the socket or went away): Twilio goes on after `</Connect>`.
pub const STREAM_FALLBACK: &str =
    "We are sorry, we cannot connect your call right now. Please try again in a few minutes. Goodbye.";

/// An empty `<Response/>` (status callbacks, refusals).
pub const EMPTY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

/// [`EMPTY`] as a response body.
pub fn empty() -> Bytes {
    Bytes::from_static(EMPTY.as_bytes())
}

/// `<Say>text</Say>`, optionally followed by `<Hangup/>`.
pub fn say(text: &str, hangup: bool) -> String {
    let hangup = if hangup { "<Hangup/>" } else { "" };
    format!("{HEAD}<Response><Say>{}</Say>{hangup}</Response>", escape(text))
}

/// `<Connect><Stream url=…>` with the call sid and business id as stream parameters.
pub fn stream(url: &str, call_sid: &str, business_id: i64) -> String {
    format!(
        "{HEAD}<Response><Connect><Stream url=\"{}\"><Parameter name=\"call_sid\" value=\"{}\"/><Parameter name=\"business_id\" value=\"{business_id}\"/></Stream></Connect></Response>",
        escape(url),
        escape(call_sid)
    )
}

/// `<Connect><Stream>` to this host's media relay (`stream_url`, without a query string: Twilio
/// refuses one), the call sid and business id as stream parameters, the stream's events reported
/// to `status_callback`, then [`STREAM_FALLBACK`] and a hang-up for a stream that ends early.
pub fn relayed_stream(stream_url: &str, status_callback: &str, call_sid: &str, business_id: i64) -> String {
    format!(
        "{HEAD}<Response><Connect><Stream url=\"{}\" statusCallback=\"{}\" statusCallbackMethod=\"POST\"><Parameter name=\"call_sid\" value=\"{}\"/><Parameter name=\"business_id\" value=\"{business_id}\"/></Stream></Connect><Say>{}</Say><Hangup/></Response>",
        escape(stream_url),
        escape(status_callback),
        escape(call_sid),
        escape(STREAM_FALLBACK)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_attributes_are_escaped() {
        let xml = say("Tom & Jerry's <clinic> \"best\"", false);
        assert!(
            xml.ends_with("<Response><Say>Tom &amp; Jerry&apos;s &lt;clinic&gt; &quot;best&quot;</Say></Response>"),
            "{xml}"
        );
        let xml = stream("wss://x.example/s?a=1&b=\"2\"", "CA<1>", 7);
        assert!(
            xml.contains("url=\"wss://x.example/s?a=1&amp;b=&quot;2&quot;\""),
            "{xml}"
        );
        assert!(xml.contains("value=\"CA&lt;1&gt;\""), "{xml}");
        let xml = relayed_stream(
            "wss://v.example/ws/twilio/media",
            "https://v.example/webhook/stream_status?a=1&b=2",
            "CA9",
            3,
        );
        assert!(
            xml.contains(r#"<Stream url="wss://v.example/ws/twilio/media" statusCallback="https://v.example/webhook/stream_status?a=1&amp;b=2" statusCallbackMethod="POST"><Parameter name="call_sid" value="CA9"/><Parameter name="business_id" value="3"/></Stream></Connect><Say>"#),
            "{xml}"
        );
        assert!(xml.ends_with("</Say><Hangup/></Response>"), "{xml}");
        assert!(say(UNKNOWN_NUMBER, true).ends_with("</Say><Hangup/></Response>"));
        assert_eq!(empty(), format!("{HEAD}<Response/>"));
    }
}
