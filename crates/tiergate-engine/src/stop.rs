//! Stop sequences on streamed text: text is released only once it can no longer be the start of
//! a stop sequence, so a stop sequence never reaches the caller, not even in part.

#[derive(Debug, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    /// Decoded but not yet released.
    pending: String,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Released {
    pub text: String,
    pub stopped: bool,
}

impl StopMatcher {
    pub(crate) fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds decoded text; returns what may be released now and whether a stop sequence matched
    /// (then the released text ends right before it).
    pub(crate) fn push(&mut self, delta: &str) -> Released {
        self.pending.push_str(delta);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min();
        if let Some(position) = first_stop {
            let text = self.pending[..position].to_string();
            self.pending.clear();
            return Released {
                text,
                stopped: true,
            };
        }
        let hold = self.held_suffix_len();
        let release = self.pending.len() - hold;
        let text: String = self.pending.drain(..release).collect();
        Released {
            text,
            stopped: false,
        }
    }

    /// Everything still held back (generation ended without a stop).
    pub(crate) fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of some stop sequence.
    fn held_suffix_len(&self) -> usize {
        let mut longest = 0;
        for (start, _) in self.pending.char_indices() {
            let suffix = &self.pending[start..];
            if self.stops.iter().any(|stop| stop.starts_with(suffix)) {
                longest = suffix.len();
                break; // char_indices goes from the longest suffix to the shortest
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut matcher = StopMatcher::new(&stops);
        let mut out = String::new();
        for delta in deltas {
            let released = matcher.push(delta);
            out.push_str(&released.text);
            if released.stopped {
                return (out, true);
            }
        }
        out.push_str(&matcher.flush());
        (out, false)
    }

    #[test]
    fn stop_split_over_tokens_is_caught_and_excluded() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn near_miss_is_released_in_full() {
        assert_eq!(
            run(&["END"], &["hello EN", "X"]),
            ("hello ENX".into(), false)
        );
        assert_eq!(run(&["END"], &["hello EN"]), ("hello EN".into(), false));
    }

    #[test]
    fn holds_back_only_a_possible_prefix() {
        let stops = vec!["\n\n".to_string()];
        let mut matcher = StopMatcher::new(&stops);
        assert_eq!(matcher.push("ab\n").text, "ab");
        assert_eq!(
            matcher.push("c"),
            Released {
                text: "\nc".into(),
                stopped: false
            }
        );
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        assert_eq!(run(&["é!", "b"], &["aé!b"]), ("a".into(), true));
        assert_eq!(run(&["zz"], &["ééé"]), ("ééé".into(), false));
    }
}
