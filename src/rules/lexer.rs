//! Lexer of the condition language: source text to tokens with byte spans.
//!
//! Owns literal syntax (integers, durations, strings with escapes, raw strings).
//! Must not know about fields or types: that is the compiler's job.

use super::Span;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Ident(String),
    Int(i64),
    /// A duration literal in seconds (`90s`, `30m`, `24h`, `7d`).
    Duration(i64),
    Str(String),
    AndAnd,
    OrOr,
    Bang,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Int(n) => format!("`{n}`"),
            Tok::Duration(_) => "a duration".into(),
            Tok::Str(_) => "a string".into(),
            Tok::AndAnd => "`&&`".into(),
            Tok::OrOr => "`||`".into(),
            Tok::Bang => "`!`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Dot => "`.`".into(),
            Tok::EqEq => "`==`".into(),
            Tok::NotEq => "`!=`".into(),
            Tok::Lt => "`<`".into(),
            Tok::Le => "`<=`".into(),
            Tok::Gt => "`>`".into(),
            Tok::Ge => "`>=`".into(),
            Tok::Plus => "`+`".into(),
            Tok::Minus => "`-`".into(),
            Tok::Star => "`*`".into(),
            Tok::Eof => "end of expression".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct LexError {
    pub message: String,
    pub span: Span,
}

fn err<T>(message: impl Into<String>, start: usize, end: usize) -> Result<T, LexError> {
    Err(LexError { message: message.into(), span: Span { start, end } })
}

/// Splits `src` into tokens; the last one is always [`Tok::Eof`].
pub fn lex(src: &str) -> Result<Vec<(Tok, Span)>, LexError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let two = |a: u8, b: u8| c == a && bytes.get(i + 1) == Some(&b);
        let (tok, len) = if two(b'&', b'&') {
            (Tok::AndAnd, 2)
        } else if two(b'|', b'|') {
            (Tok::OrOr, 2)
        } else if two(b'=', b'=') {
            (Tok::EqEq, 2)
        } else if two(b'!', b'=') {
            (Tok::NotEq, 2)
        } else if two(b'<', b'=') {
            (Tok::Le, 2)
        } else if two(b'>', b'=') {
            (Tok::Ge, 2)
        } else {
            match c {
                b'!' => (Tok::Bang, 1),
                b'(' => (Tok::LParen, 1),
                b')' => (Tok::RParen, 1),
                b'[' => (Tok::LBracket, 1),
                b']' => (Tok::RBracket, 1),
                b',' => (Tok::Comma, 1),
                b'.' => (Tok::Dot, 1),
                b'<' => (Tok::Lt, 1),
                b'>' => (Tok::Gt, 1),
                b'+' => (Tok::Plus, 1),
                b'-' => (Tok::Minus, 1),
                b'*' => (Tok::Star, 1),
                b'=' => return err("`=` is not an operator; use `==` to compare", i, i + 1),
                b'&' => return err("`&` is not an operator; use `&&`", i, i + 1),
                b'|' => return err("`|` is not an operator; use `||`", i, i + 1),
                b'0'..=b'9' => {
                    let (tok, end) = lex_number(src, i)?;
                    out.push((tok, Span { start, end }));
                    i = end;
                    continue;
                }
                b'r' | b'R' if matches!(bytes.get(i + 1), Some(b'"' | b'\'')) => {
                    let (s, end) = lex_string(src, i + 1, true)?;
                    out.push((Tok::Str(s), Span { start, end }));
                    i = end;
                    continue;
                }
                b'"' | b'\'' => {
                    let (s, end) = lex_string(src, i, false)?;
                    out.push((Tok::Str(s), Span { start, end }));
                    i = end;
                    continue;
                }
                c if c == b'_' || c.is_ascii_alphabetic() => {
                    let end = src[i..]
                        .find(|ch: char| !(ch == '_' || ch.is_ascii_alphanumeric()))
                        .map_or(src.len(), |n| i + n);
                    out.push((Tok::Ident(src[i..end].to_string()), Span { start, end }));
                    i = end;
                    continue;
                }
                _ => {
                    let ch = src[i..].chars().next().unwrap_or('?');
                    return err(format!("unexpected character `{ch}`"), i, i + ch.len_utf8());
                }
            }
        };
        out.push((tok, Span { start, end: i + len }));
        i += len;
    }
    out.push((Tok::Eof, Span { start: src.len(), end: src.len() }));
    Ok(out)
}

fn lex_number(src: &str, start: usize) -> Result<(Tok, usize), LexError> {
    let bytes = src.as_bytes();
    let mut end = start;
    while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'_') {
        end += 1;
    }
    let digits: String = src[start..end].chars().filter(|c| *c != '_').collect();
    let Ok(value) = digits.parse::<i64>() else {
        return err("integer literal is too large", start, end);
    };
    let unit = match bytes.get(end) {
        Some(b's') => Some(1),
        Some(b'm') => Some(60),
        Some(b'h') => Some(3600),
        Some(b'd') => Some(86_400),
        _ => None,
    };
    match unit {
        Some(mult) => {
            let after = end + 1;
            if bytes.get(after).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
                return err("bad duration literal; write e.g. `90s`, `30m`, `24h` or `7d`", start, after + 1);
            }
            let Some(secs) = value.checked_mul(mult) else {
                return err("duration literal is too large", start, after);
            };
            Ok((Tok::Duration(secs), after))
        }
        None => {
            if bytes.get(end).is_some_and(|b| b.is_ascii_alphabetic()) {
                return err("bad number; a duration unit is one of s, m, h, d", start, end + 1);
            }
            Ok((Tok::Int(value), end))
        }
    }
}

/// Lexes a quoted string starting at the quote `start`; returns the value and the
/// end offset after the closing quote.
fn lex_string(src: &str, start: usize, raw: bool) -> Result<(String, usize), LexError> {
    let quote = src.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, ch)) = chars.next() {
        let at = start + 1 + off;
        if ch == quote {
            return Ok((out, at + 1));
        }
        if ch == '\\' && !raw {
            let Some((_, esc)) = chars.next() else { break };
            out.push(match esc {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '\\' => '\\',
                '"' => '"',
                '\'' => '\'',
                other => {
                    return err(
                        format!("unknown escape `\\{other}`; for a regex use a raw string r\"...\""),
                        at,
                        at + 1 + other.len_utf8(),
                    )
                }
            });
            continue;
        }
        out.push(ch);
    }
    err("unterminated string", start, src.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        lex(src).unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn lexes_operators_literals_and_durations() {
        assert_eq!(
            toks("a.b >= 24h && x != 'y\\'z' || !c in [1_000, 2]"),
            vec![
                Tok::Ident("a".into()),
                Tok::Dot,
                Tok::Ident("b".into()),
                Tok::Ge,
                Tok::Duration(86_400),
                Tok::AndAnd,
                Tok::Ident("x".into()),
                Tok::NotEq,
                Tok::Str("y'z".into()),
                Tok::OrOr,
                Tok::Bang,
                Tok::Ident("c".into()),
                Tok::Ident("in".into()),
                Tok::LBracket,
                Tok::Int(1000),
                Tok::Comma,
                Tok::Int(2),
                Tok::RBracket,
                Tok::Eof
            ]
        );
        assert_eq!(toks(r#"r"\d+""#), vec![Tok::Str(r"\d+".into()), Tok::Eof]);
    }

    #[test]
    fn reports_spans_of_bad_input() {
        let e = lex("a = 1").unwrap_err();
        assert_eq!(e.span, Span { start: 2, end: 3 });
        assert!(lex("'open").is_err());
        assert!(lex("12x").is_err());
        assert!(lex("99999999999999999999").is_err());
        assert!(lex("\"\\q\"").is_err());
    }
}
