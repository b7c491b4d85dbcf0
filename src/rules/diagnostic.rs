//! Errors for humans: `file:line:col`, the offending line and a caret under it.

use super::Span;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the error is about the whole file (e.g. unreadable).
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
    source_line: String,
    caret_width: usize,
}

impl Diagnostic {
    /// An error at byte range `span` of the file text `src`.
    pub fn at(file: &str, src: &str, span: Span, message: impl Into<String>) -> Diagnostic {
        let start = floor_char_boundary(src, span.start.min(src.len()));
        let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
        let line = src[..start].matches('\n').count() + 1;
        let col = src[line_start..start].chars().count() + 1;
        let end = floor_char_boundary(src, span.end.clamp(start, line_end));
        let caret_width = src[start..end].chars().count().max(1);
        Diagnostic {
            file: file.to_string(),
            line,
            col,
            message: message.into(),
            source_line: src[line_start..line_end].trim_end_matches('\r').to_string(),
            caret_width,
        }
    }

    /// An error about a whole file.
    pub fn file(file: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_string(),
            line: 0,
            col: 0,
            message: message.into(),
            source_line: String::new(),
            caret_width: 0,
        }
    }

    /// A TOML syntax or shape error in `text`, at the place the parser names.
    pub fn toml(file: &str, text: &str, error: &toml::de::Error) -> Diagnostic {
        let span = error.span().map_or(Span::default(), |r| Span { start: r.start, end: r.end });
        Diagnostic::at(file, text, span, one_line(error.message()))
    }

    /// `file:line:col`
    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.clone()
        } else {
            format!("{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

/// A multi-line library message on one line, for `file:line:col: message`.
pub fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: {}", self.location(), self.message)?;
        if self.line > 0 {
            let num = self.line.to_string();
            let pad = " ".repeat(num.len());
            // Wide (CJK) characters take two columns in a terminal.
            let indent: String = self
                .source_line
                .chars()
                .take(self.col - 1)
                .map(|c| {
                    if c == '\t' {
                        "\t"
                    } else if is_wide(c) {
                        "  "
                    } else {
                        " "
                    }
                })
                .collect();
            let width: usize = self
                .source_line
                .chars()
                .skip(self.col - 1)
                .take(self.caret_width)
                .map(|c| if is_wide(c) { 2 } else { 1 })
                .sum::<usize>()
                .max(1);
            write!(f, "\n{pad} |\n{num} | {}\n{pad} | {indent}{}", self.source_line, "^".repeat(width))?;
        }
        Ok(())
    }
}

fn is_wide(c: char) -> bool {
    matches!(c as u32, 0x1100..=0x115F | 0x2E80..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x20000..=0x3FFFD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_line_col_and_caret() {
        let src = "a = 1\nwhen = \"customer.agee > 1\"\n";
        let d = Diagnostic::at("rules/x.toml", src, Span { start: 14, end: 27 }, "unknown field");
        assert_eq!(d.location(), "rules/x.toml:2:9");
        let text = d.to_string();
        assert!(text.ends_with("2 | when = \"customer.agee > 1\"\n  |         ^^^^^^^^^^^^^"), "{text}");
    }

    #[test]
    fn counts_columns_in_characters() {
        let src = "memo = \"刷单\" x";
        let d = Diagnostic::at("f", src, Span { start: 15, end: 16 }, "m");
        assert_eq!(d.col, 12);
    }
}
