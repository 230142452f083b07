//! The Media Streams messages, as far as the relay reads them: the `event` of every message, the
//! `start` message in full. Messages are relayed as the text they arrived as, never re-encoded.
//!
//! Twilio sends `connected`, `start`, `media`, `dtmf`, `mark` and `stop`
//! (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>); it accepts `media`,
//! `mark` and `clear` back, and ends the stream on anything else (error 31924), so the relay
//! passes only those from the agent.

use std::collections::HashMap;

use serde::Deserialize;

/// What a message is, by its `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `connected`: the first message of a stream.
    Connected,
    /// `start`: the stream's metadata (once).
    Start,
    /// `media`: 20 ms of audio. The only kind the relay may drop.
    Media,
    /// `dtmf`: a key the caller pressed.
    Dtmf,
    /// `mark`: audio played up to a point (Twilio → agent), or a point to report (agent → Twilio).
    Mark,
    /// `clear`: drop the audio Twilio has buffered (agent → Twilio).
    Clear,
    /// `stop`: the stream ended.
    Stop,
    /// Anything else, or not a JSON object with an `event`.
    Other,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
}

impl Event {
    /// The event of a message's text.
    pub fn of(text: &str) -> Self {
        let Ok(head) = serde_json::from_str::<Head<'_>>(text) else {
            return Self::Other;
        };
        match &*head.event {
            "connected" => Self::Connected,
            "start" => Self::Start,
            "media" => Self::Media,
            "dtmf" => Self::Dtmf,
            "mark" => Self::Mark,
            "clear" => Self::Clear,
            "stop" => Self::Stop,
            _ => Self::Other,
        }
    }

    /// Whether Twilio sends it.
    pub fn from_twilio(self) -> bool {
        matches!(
            self,
            Self::Connected | Self::Start | Self::Media | Self::Dtmf | Self::Mark | Self::Stop
        )
    }

    /// Whether Twilio accepts it from the agent (anything else ends the stream: error 31924).
    pub fn to_twilio(self) -> bool {
        matches!(self, Self::Media | Self::Mark | Self::Clear)
    }
}

/// The `start` message.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    /// The stream's id (`MZ…`).
    #[serde(default)]
    pub stream_sid: String,
    /// The stream's metadata.
    pub start: StartBody,
}

/// The `start` message's `start` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartBody {
    /// The call.
    #[serde(default)]
    pub call_sid: String,
    /// `inbound`, `outbound`.
    #[serde(default)]
    pub tracks: Vec<String>,
    /// The `<Parameter>`s of the TwiML.
    #[serde(default)]
    pub custom_parameters: HashMap<String, String>,
    /// The audio's format.
    #[serde(default)]
    pub media_format: Option<MediaFormat>,
}

/// The audio's format (`audio/x-mulaw`, 8000 Hz, 1 channel).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    /// `audio/x-mulaw`.
    #[serde(default)]
    pub encoding: String,
    /// 8000.
    #[serde(default)]
    pub sample_rate: u32,
    /// 1.
    #[serde(default)]
    pub channels: u32,
}

impl Start {
    /// The call and business the stream claims to be of: the call sid of `start` (which Twilio
    /// sets) must equal the `call_sid` parameter of our TwiML, and `business_id` must be a number.
    ///
    /// # Errors
    /// Why the claim is not one we could have made.
    pub fn claim(&self) -> Result<(&str, i64), String> {
        let call_sid = self.start.call_sid.as_str();
        if call_sid.is_empty() {
            return Err("the start message names no callSid".to_owned());
        }
        let params = &self.start.custom_parameters;
        match params.get("call_sid") {
            Some(ours) if ours == call_sid => {}
            Some(_) => return Err("the call_sid parameter is not the stream's callSid".to_owned()),
            None => return Err("no call_sid parameter: not a stream of our TwiML".to_owned()),
        }
        let business = params
            .get("business_id")
            .and_then(|b| b.parse::<i64>().ok())
            .ok_or_else(|| "no numeric business_id parameter: not a stream of our TwiML".to_owned())?;
        Ok((call_sid, business))
    }

    /// `audio/x-mulaw/8000/1`, or `-`.
    pub fn format(&self) -> String {
        self.start.media_format.as_ref().map_or_else(
            || "-".to_owned(),
            |f| format!("{}/{}/{}", f.encoding, f.sample_rate, f.channels),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_from_the_text_and_only_twilios_own_pass_back() {
        assert_eq!(
            Event::of(r#"{"event":"media","media":{"payload":"AA=="}}"#),
            Event::Media
        );
        assert_eq!(Event::of(r#"{"streamSid":"MZ1","event":"stop"}"#), Event::Stop);
        for other in [
            r#"{"event":"hello"}"#,
            "not json",
            r#"["event","media"]"#,
            r#"{"x":1}"#,
            "",
        ] {
            assert_eq!(Event::of(other), Event::Other, "{other}");
        }
        assert!(Event::Media.to_twilio() && Event::Mark.to_twilio() && Event::Clear.to_twilio());
        assert!(!Event::Dtmf.to_twilio() && !Event::Stop.to_twilio() && !Event::Other.to_twilio());
        assert!(!Event::Clear.from_twilio());
    }

    #[test]
    fn a_start_claims_its_call_and_business_through_our_parameters() {
        let start: Start = serde_json::from_str(
            r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":{"call_sid":"CA1","business_id":"7"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#,
        )
        .unwrap();
        assert_eq!(start.claim(), Ok(("CA1", 7)));
        assert_eq!(start.format(), "audio/x-mulaw/8000/1");
        let mut other = start.clone();
        other.start.custom_parameters.insert("call_sid".into(), "CA2".into());
        assert!(other.claim().is_err());
        let mut other = start.clone();
        other
            .start
            .custom_parameters
            .insert("business_id".into(), "seven".into());
        assert!(other.claim().is_err());
        let mut other = start;
        other.start.custom_parameters.clear();
        assert!(other.claim().is_err());
    }
}
