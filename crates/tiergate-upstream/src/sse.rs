//! An incremental parser of Server-Sent Events (the WHATWG `text/event-stream` format) as
//! OpenAI-compatible providers stream them. Bytes go in as they arrive from the network, split
//! anywhere (inside a line, between `\r` and `\n`, inside a UTF-8 character); complete events
//! come out.
//!
//! Handled: `data:` lines (several per event are joined with `\n`), one optional space after
//! the colon, `event:` names, `:` comment lines (keep-alives), `\n`, `\r\n` and `\r` line ends.
//! `id:` and `retry:` are read and ignored: the client never reconnects a generation.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name; empty for the default ("message").
    pub event: String,
    pub data: String,
}

/// A line or event grew past the parser's limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event larger than {limit} bytes")]
pub struct SseTooLarge {
    pub limit: usize,
}

/// The parser state between chunks.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting the next chunk belongs to that line end.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    limit: usize,
}

impl SseParser {
    /// Default bound on one event's size: far above any chunk a provider sends, far below memory
    /// trouble.
    pub const DEFAULT_LIMIT: usize = 4 * 1024 * 1024;

    pub fn new() -> Self {
        Self::with_limit(Self::DEFAULT_LIMIT)
    }

    /// A parser that fails on a line or event longer than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            limit,
        }
    }

    /// Feeds the next bytes; returns the events they completed, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<SseEvent>, SseTooLarge> {
        let mut events = Vec::new();
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.extend_line(&bytes[..end])?;
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.process_line(&line)? {
                events.push(event);
            }
            self.line = line;
            self.line.clear();
            let was_cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if was_cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.extend_line(bytes)?;
        Ok(events)
    }

    /// Whether bytes of an unfinished event are buffered (the stream ended mid-event).
    pub fn has_partial_event(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseTooLarge> {
        if self.line.len() + bytes.len() > self.limit {
            return Err(SseTooLarge { limit: self.limit });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseTooLarge> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(SseTooLarge { limit: self.limit });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            // id, retry and unknown fields are ignored, as the format says.
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse_whole(input: &[u8]) -> Vec<SseEvent> {
        SseParser::new().feed(input).unwrap()
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    /// A stream with every feature: comments, multi-line data, event names, ids, mixed line
    /// ends, a multi-byte character, an event without data, and the OpenAI terminator.
    const STREAM: &[u8] = b": keep-alive\r\n\r\n\
data: {\"a\":1}\n\n\
event: delta\r\nid: 7\r\ndata: line one\r\ndata:line two\r\n\r\n\
data: caf\xc3\xa9 \xe2\x9c\x93\r\rretry: 100\n\n\
data\n\n\
data: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        let ev = |event: &str, data: &str| SseEvent {
            event: event.to_owned(),
            data: data.to_owned(),
        };
        vec![
            ev("", "{\"a\":1}"),
            ev("delta", "line one\nline two"),
            ev("", "caf\u{e9} \u{2713}"),
            ev("", ""),
            ev("", "[DONE]"),
        ]
    }

    #[test]
    fn parses_every_feature_in_one_chunk() {
        assert_eq!(parse_whole(STREAM), expected());
    }

    #[test]
    fn any_single_split_gives_the_same_events() {
        for split in 0..=STREAM.len() {
            let mut parser = SseParser::new();
            let mut events = parser.feed(&STREAM[..split]).unwrap();
            events.extend(parser.feed(&STREAM[split..]).unwrap());
            assert_eq!(events, expected(), "split at byte {split}");
            assert!(!parser.has_partial_event());
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for byte in STREAM {
            events.extend(parser.feed(std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(events, expected());
    }

    #[test]
    fn every_pair_of_splits_gives_the_same_events() {
        for a in 0..=STREAM.len() {
            for b in a..=STREAM.len() {
                let mut parser = SseParser::new();
                let mut events = parser.feed(&STREAM[..a]).unwrap();
                events.extend(parser.feed(&STREAM[a..b]).unwrap());
                events.extend(parser.feed(&STREAM[b..]).unwrap());
                assert_eq!(events, expected(), "splits at {a} and {b}");
            }
        }
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_end() {
        let mut parser = SseParser::new();
        assert!(parser.feed(b"data: x\r").unwrap().is_empty());
        // The \n completes the \r line end; the next \r\n is the blank line.
        assert!(parser.feed(b"\n").unwrap().is_empty());
        assert_eq!(data(&parser.feed(b"\r\n").unwrap()), ["x"]);
    }

    #[test]
    fn comments_and_blank_lines_alone_dispatch_nothing() {
        assert!(parse_whole(b": ping\n\n:\n\n\n\n").is_empty());
    }

    #[test]
    fn only_one_space_after_the_colon_is_stripped() {
        assert_eq!(data(&parse_whole(b"data:  two\n\n")), [" two"]);
    }

    #[test]
    fn an_unfinished_event_is_reported_not_dispatched() {
        let mut parser = SseParser::new();
        assert!(parser.feed(b"data: half").unwrap().is_empty());
        assert!(parser.has_partial_event());
        let mut parser = SseParser::new();
        assert!(parser.feed(b"data: whole line\n").unwrap().is_empty());
        assert!(parser.has_partial_event());
    }

    #[test]
    fn events_over_the_limit_fail_instead_of_growing() {
        let mut parser = SseParser::with_limit(16);
        assert!(parser.feed(b"data: 0123456789").is_ok());
        assert_eq!(
            parser.feed(b"abcdefgh").unwrap_err(),
            SseTooLarge { limit: 16 }
        );
        // Many short data lines add up too.
        let mut parser = SseParser::with_limit(16);
        let err = parser.feed(b"data: 0123456\ndata: 0123456\ndata: 01\n");
        assert!(err.is_err());
    }
}
