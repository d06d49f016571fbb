//! Cheap text features of a prompt: counts a router can compute in microseconds, before any
//! model runs. One pass over the characters, one over the lowercased words; no regex.

use serde::Serialize;

/// Counts extracted from one prompt. Every field is a plain count (or a share in `[0, 1]`),
/// so a decision's JSON shows exactly what the router saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PromptFeatures {
    /// Unicode scalar values.
    pub chars: u32,
    /// Whitespace-separated words.
    pub words: u32,
    /// Sentence ends (`.`, `!`, `?` followed by whitespace or the end), at least 1 for any text.
    pub sentences: u32,
    /// Non-empty lines.
    pub lines: u32,
    /// Question marks.
    pub questions: u32,
    /// Decimal digits.
    pub digits: u32,
    /// Maximal runs of digits (`3.5` and `80,000` count once).
    pub numbers: u32,
    /// Arithmetic and comparison symbols (`+ * / = ^ < > % × ÷ √ ≤ ≥ ≠ ∑ ∫`, a `-` between
    /// digits or spaces) and `$` / `\frac`-style markup.
    pub math_operators: u32,
    /// Mathematical vocabulary ("solve", "equation", "probability", "how many", ...).
    pub math_words: u32,
    /// Code markers: braces, semicolons, backticks, and keywords such as `def`, `fn`, `return`.
    pub code_markers: u32,
    /// Words asking for several steps of reasoning ("then", "explain", "compare", "why",
    /// "prove", "step by step", ...).
    pub multi_step_cues: u32,
    /// Negations and exceptions that invert a question ("not", "except", "false", "least").
    pub negation_cues: u32,
    /// Lines that start like a list item (`-`, `*`, `•`, `1.`, `2)`).
    pub list_items: u32,
    /// Lines that start like a multiple-choice option (`A.`, `B)`, `(c)`).
    pub answer_choices: u32,
    /// Words of 10 or more letters: a proxy for technical vocabulary.
    pub long_words: u32,
    /// Words that start with an uppercase letter, not counting the first word of the text:
    /// names, places, titles (knowledge-heavy prompts).
    pub capitalized_words: u32,
    /// Mean word length in characters (0 for no words).
    pub mean_word_len: f32,
    /// Share of characters outside ASCII, in `[0, 1]`: a hint of another language or script.
    pub non_ascii_share: f32,
}

// Word classes, one match per word (the compiler turns it into a length-then-bytes search).
const MATH: u8 = 1;
const CODE: u8 = 2;
const MULTI_STEP: u8 = 4;
const NEGATION: u8 = 8;

/// The class of a lowercased word: mathematical vocabulary, a code keyword, a multi-step cue
/// or a negation; 0 for any other word.
fn word_class(word: &str) -> u8 {
    match word {
        "calculate" | "compute" | "solve" | "sum" | "product" | "total" | "equation"
        | "equations" | "integral" | "derivative" | "probability" | "percent" | "percentage"
        | "ratio" | "average" | "median" | "remainder" | "divisible" | "prime" | "fraction"
        | "multiply" | "multiplied" | "divide" | "divided" | "square" | "root" | "polynomial"
        | "matrix" | "vector" | "theorem" | "area" | "volume" | "perimeter" | "twice" | "half"
        | "times" | "each" | "per" | "cost" | "costs" | "price" | "rate" | "speed" => MATH,
        "def" | "fn" | "return" | "class" | "import" | "void" | "int" | "const" | "let" | "var"
        | "println" | "printf" | "lambda" | "struct" | "impl" | "include" | "#include" | "null"
        | "nullptr" | "async" | "await" => CODE,
        "then" | "explain" | "compare" | "why" | "prove" | "derive" | "justify" | "analyze"
        | "analyse" | "evaluate" | "first" | "second" | "finally" | "after" | "afterwards"
        | "because" | "therefore" | "difference" | "steps" | "describe" | "discuss" | "if"
        | "until" | "remaining" | "rest" => MULTI_STEP,
        "not" | "except" | "false" | "least" | "incorrect" | "never" | "neither" | "nor"
        | "cannot" | "isn't" | "doesn't" | "won't" => NEGATION,
        _ => 0,
    }
}

/// Two-word cues, matched on consecutive lowercased words.
const MATH_PAIRS: &[(&str, &str)] = &[("how", "many"), ("how", "much"), ("how", "long")];
const MULTI_STEP_PAIRS: &[(&str, &str)] = &[
    ("step", "by"),
    ("show", "that"),
    ("in", "detail"),
    ("and", "then"),
    ("what", "if"),
];

impl PromptFeatures {
    /// Extracts the features of `text`. Never fails; an empty text gives all zeros.
    pub fn extract(text: &str) -> PromptFeatures {
        let mut f = PromptFeatures::default();
        scan_chars(text, &mut f);
        scan_lines(text, &mut f);
        scan_words(text, &mut f);
        f
    }
}

fn scan_chars(text: &str, f: &mut PromptFeatures) {
    let mut non_ascii = 0u32;
    let mut prev = ' ';
    let mut prev_non_space = ' ';
    let mut in_number = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let next = chars.peek().copied().unwrap_or(' ');
        f.chars += 1;
        if !c.is_ascii() {
            non_ascii += 1;
        }
        if c.is_ascii_digit() {
            f.digits += 1;
            if !in_number {
                f.numbers += 1;
                in_number = true;
            }
        } else if !((c == '.' || c == ',') && prev.is_ascii_digit() && next.is_ascii_digit()) {
            in_number = false;
        }
        match c {
            '?' => {
                f.questions += 1;
                if next.is_whitespace() {
                    f.sentences += 1;
                }
            }
            '.' | '!' if next.is_whitespace() => f.sentences += 1,
            '+' | '*' | '=' | '^' | '<' | '>' | '%' | '×' | '÷' | '√' | '≤' | '≥' | '≠' | '∑'
            | '∫' | 'π' | '$' => f.math_operators += 1,
            // A slash between numbers (3/4), not in a path or "and/or".
            '/' if prev_non_space.is_ascii_digit() && next.is_ascii_digit() => {
                f.math_operators += 1
            }
            // A minus between digits or spaced out (5 - 3), not a hyphenated word.
            '-' if (prev.is_ascii_digit() || prev == ' ')
                && (next.is_ascii_digit() || next == ' ')
                && prev_non_space.is_ascii_alphanumeric() =>
            {
                f.math_operators += 1
            }
            '\\' if next.is_ascii_alphabetic() => f.math_operators += 1,
            '{' | '}' | ';' | '`' => f.code_markers += 1,
            _ => {}
        }
        prev = c;
        if !c.is_whitespace() {
            prev_non_space = c;
        }
    }
    // A trailing sentence without a final full stop still counts.
    if !matches!(prev_non_space, '.' | '!' | '?' | ' ') {
        f.sentences += 1;
    }
    if f.chars > 0 {
        f.non_ascii_share = non_ascii as f32 / f.chars as f32;
    }
}

fn scan_lines(text: &str, f: &mut PromptFeatures) {
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() {
            continue;
        }
        f.lines += 1;
        if is_choice_line(line) {
            f.answer_choices += 1;
        } else if is_list_line(line) {
            f.list_items += 1;
        }
    }
}

/// `A. text`, `b) text`, `(C) text`: one letter A-H, a closing mark, a space.
fn is_choice_line(line: &str) -> bool {
    let bytes = line.as_bytes();
    let rest = if bytes.first() == Some(&b'(') {
        &bytes[1..]
    } else {
        bytes
    };
    match rest {
        [letter, mark, b' ', ..] => {
            matches!(letter.to_ascii_uppercase(), b'A'..=b'H') && matches!(mark, b'.' | b')' | b':')
        }
        _ => false,
    }
}

/// `- item`, `* item`, `• item`, `1. item`, `12) item`.
fn is_list_line(line: &str) -> bool {
    if line.starts_with("- ") || line.starts_with("* ") || line.starts_with("• ") {
        return true;
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0
        && digits <= 3
        && matches!(line.as_bytes().get(digits), Some(b'.' | b')'))
        && line.as_bytes().get(digits + 1) == Some(&b' ')
}

fn scan_words(text: &str, f: &mut PromptFeatures) {
    let mut letters_total = 0u32;
    let mut prev_word = String::new();
    let mut word = String::new();
    for raw in text.split_whitespace() {
        if f.words > 0 && raw.chars().next().is_some_and(char::is_uppercase) {
            f.capitalized_words += 1;
        }
        f.words += 1;
        // Keep letters, digits, and an inner apostrophe ("isn't"); lowercase as we go.
        word.clear();
        for c in raw.chars() {
            if c.is_ascii() {
                if c.is_ascii_alphanumeric() || c == '\'' || c == '#' {
                    word.push(c.to_ascii_lowercase());
                }
            } else if c.is_alphanumeric() {
                word.extend(c.to_lowercase());
            }
        }
        let word = word.trim_matches('\'');
        let letters = word.chars().filter(|c| c.is_alphabetic()).count() as u32;
        letters_total += word.chars().count() as u32;
        if letters >= 10 {
            f.long_words += 1;
        }
        match word_class(word) {
            MATH => f.math_words += 1,
            CODE => f.code_markers += 1,
            MULTI_STEP => f.multi_step_cues += 1,
            NEGATION => f.negation_cues += 1,
            _ => {}
        }
        let pair = (prev_word.as_str(), word);
        if MATH_PAIRS.contains(&pair) {
            f.math_words += 1;
        }
        if MULTI_STEP_PAIRS.contains(&pair) {
            f.multi_step_cues += 1;
        }
        prev_word.clear();
        prev_word.push_str(word);
    }
    if f.words > 0 {
        f.mean_word_len = letters_total as f32 / f.words as f32;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn empty_text_is_all_zeros() {
        assert_eq!(PromptFeatures::extract(""), PromptFeatures::default());
        assert_eq!(PromptFeatures::extract("   \n\t ").words, 0);
    }

    #[test]
    fn counts_words_sentences_questions() {
        let f = PromptFeatures::extract("Turn on the lights. Is it late? Yes");
        assert_eq!(f.words, 8);
        assert_eq!(f.sentences, 3);
        assert_eq!(f.questions, 1);
        assert_eq!(f.chars, 35);
        assert_eq!(f.lines, 1);
    }

    #[test]
    fn numbers_count_once_with_separators() {
        let f = PromptFeatures::extract("He paid $80,000 and then 3.5 more, 12 times.");
        assert_eq!(f.numbers, 3);
        assert_eq!(f.digits, 9);
        assert!(f.math_operators >= 1, "the dollar sign");
        assert_eq!(f.math_words, 1, "times");
        assert_eq!(f.multi_step_cues, 2, "then, and then");
    }

    #[test]
    fn math_operators_ignore_hyphenated_words_and_paths() {
        let f = PromptFeatures::extract("a well-known and/or x = 3 - 2 + 4/5");
        assert_eq!(f.math_operators, 4, "=, -, +, /");
    }

    #[test]
    fn code_markers_and_keywords() {
        let f = PromptFeatures::extract("Fix this:\n```\nfn main() { let x = 1; }\n```");
        // 6 backticks, 2 braces, 1 semicolon, fn, let
        assert_eq!(f.code_markers, 11);
    }

    #[test]
    fn multi_step_pairs_and_negation() {
        let f = PromptFeatures::extract("Explain step by step why this is NOT true.");
        assert_eq!(f.multi_step_cues, 3, "explain, why, step by");
        assert_eq!(f.negation_cues, 1);
    }

    #[test]
    fn answer_choices_and_list_items_are_told_apart() {
        let text = "Pick one:\nA. red\nB) blue\n(c) green\n- note\n1. first\n12) twelfth\nAb. no";
        let f = PromptFeatures::extract(text);
        assert_eq!(f.answer_choices, 3);
        assert_eq!(f.list_items, 3);
        assert_eq!(f.lines, 8);
    }

    #[test]
    fn capitalized_words_skip_the_first_word() {
        let f = PromptFeatures::extract("Who wrote Hamlet in London? Shakespeare did.");
        assert_eq!(f.capitalized_words, 3, "Hamlet, London, Shakespeare");
        assert_eq!(PromptFeatures::extract("Hello").capitalized_words, 0);
    }

    #[test]
    fn non_ascii_share_and_long_words() {
        let f = PromptFeatures::extract("日本語のテキスト");
        assert!((f.non_ascii_share - 1.0).abs() < 1e-6);
        let f = PromptFeatures::extract("internationalization is long");
        assert_eq!(f.long_words, 1);
        assert_eq!(f.non_ascii_share, 0.0);
        assert!(f.mean_word_len > 8.0);
    }
}
