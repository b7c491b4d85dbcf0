//! Parser of the condition language: tokens to an untyped syntax tree.
//!
//! Grammar (lowest precedence first):
//!
//! ```text
//! expr     = or
//! or       = and ( "||" and )*
//! and      = rel ( "&&" rel )*
//! rel      = add ( ( "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" ) add )?
//! add      = mul ( ( "+" | "-" ) mul )*
//! mul      = unary ( "*" unary )*
//! unary    = ( "!" | "-" ) unary | postfix
//! postfix  = primary ( "." IDENT [ "(" args ")" ] )*
//! primary  = INT | DURATION | STRING | "true" | "false" | "[" args "]"
//!          | IDENT "(" args ")" | IDENT | "(" expr ")"
//! args     = [ expr ( "," expr )* [ "," ] ]
//! ```
//!
//! Owns syntax only; must not resolve names or types (the compiler does).

use super::lexer::{lex, LexError, Tok};
use super::Span;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Not,
    Neg,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Duration(i64),
    Str(String),
    Bool(bool),
    List(Vec<Expr>),
    /// A dotted field path such as `customer.age`.
    Path(Vec<String>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `name(args)` or, with a target, `target.name(args)`.
    Call {
        target: Option<Box<Expr>>,
        name: String,
        args: Vec<Expr>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
    pub span: Span,
}

impl From<LexError> for ParseError {
    fn from(e: LexError) -> Self {
        ParseError { message: e.message, span: e.span }
    }
}

/// Deepest nesting accepted, so a hostile rule file cannot overflow the stack.
const MAX_DEPTH: usize = 64;

/// Parses one condition.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let tokens = lex(src)?;
    let mut p = Parser { tokens, pos: 0, depth: 0 };
    let expr = p.expr()?;
    let (tok, span) = p.peek();
    if *tok != Tok::Eof {
        return Err(ParseError {
            message: format!("expected an operator or the end of the expression, found {}", tok.describe()),
            span: *span,
        });
    }
    Ok(expr)
}

struct Parser {
    tokens: Vec<(Tok, Span)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &(Tok, Span) {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> (Tok, Span) {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek().0 == *tok {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<Span, ParseError> {
        let (found, span) = self.peek().clone();
        if found == tok {
            self.bump();
            Ok(span)
        } else {
            Err(ParseError { message: format!("expected {what}, found {}", found.describe()), span })
        }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let span = self.peek().1;
            return Err(ParseError { message: format!("expression nested deeper than {MAX_DEPTH} levels"), span });
        }
        let e = self.or();
        self.depth -= 1;
        e
    }

    fn binary_chain(
        &mut self,
        next: fn(&mut Self) -> Result<Expr, ParseError>,
        ops: &[(Tok, BinOp)],
    ) -> Result<Expr, ParseError> {
        let mut lhs = next(self)?;
        'outer: loop {
            for (tok, op) in ops {
                if self.eat(tok) {
                    let rhs = next(self)?;
                    let span = lhs.span.to(rhs.span);
                    lhs = Expr { kind: ExprKind::Binary(*op, Box::new(lhs), Box::new(rhs)), span };
                    continue 'outer;
                }
            }
            return Ok(lhs);
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        self.binary_chain(Self::and, &[(Tok::OrOr, BinOp::Or)])
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        self.binary_chain(Self::rel, &[(Tok::AndAnd, BinOp::And)])
    }

    fn rel(&mut self) -> Result<Expr, ParseError> {
        let lhs = self.add()?;
        let op = match &self.peek().0 {
            Tok::EqEq => BinOp::Eq,
            Tok::NotEq => BinOp::Ne,
            Tok::Lt => BinOp::Lt,
            Tok::Le => BinOp::Le,
            Tok::Gt => BinOp::Gt,
            Tok::Ge => BinOp::Ge,
            Tok::Ident(s) if s == "in" => BinOp::In,
            _ => return Ok(lhs),
        };
        self.bump();
        let rhs = self.add()?;
        let span = lhs.span.to(rhs.span);
        let expr = Expr { kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)), span };
        if let Tok::EqEq | Tok::NotEq | Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge = self.peek().0 {
            return Err(ParseError {
                message: "comparisons do not chain; join them with `&&`".into(),
                span: self.peek().1,
            });
        }
        Ok(expr)
    }

    fn add(&mut self) -> Result<Expr, ParseError> {
        self.binary_chain(Self::mul, &[(Tok::Plus, BinOp::Add), (Tok::Minus, BinOp::Sub)])
    }

    fn mul(&mut self) -> Result<Expr, ParseError> {
        self.binary_chain(Self::unary, &[(Tok::Star, BinOp::Mul)])
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let (tok, span) = self.peek().clone();
        let op = match tok {
            Tok::Bang => UnOp::Not,
            Tok::Minus => UnOp::Neg,
            _ => return self.postfix(),
        };
        self.bump();
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError { message: format!("expression nested deeper than {MAX_DEPTH} levels"), span });
        }
        let inner = self.unary()?;
        self.depth -= 1;
        let span = span.to(inner.span);
        Ok(Expr { kind: ExprKind::Unary(op, Box::new(inner)), span })
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.primary()?;
        while self.eat(&Tok::Dot) {
            let (tok, name_span) = self.bump();
            let Tok::Ident(name) = tok else {
                return Err(ParseError {
                    message: format!("expected a field or method name after `.`, found {}", tok.describe()),
                    span: name_span,
                });
            };
            if self.peek().0 == Tok::LParen {
                self.bump();
                let (args, close) = self.args(Tok::RParen, "`)`")?;
                let span = expr.span.to(close);
                expr = Expr { kind: ExprKind::Call { target: Some(Box::new(expr)), name, args }, span };
            } else if let ExprKind::Path(parts) = &mut expr.kind {
                parts.push(name);
                expr.span = expr.span.to(name_span);
            } else {
                return Err(ParseError { message: format!("`.{name}` can only follow a field name"), span: name_span });
            }
        }
        Ok(expr)
    }

    fn args(&mut self, close: Tok, what: &str) -> Result<(Vec<Expr>, Span), ParseError> {
        let mut args = Vec::new();
        loop {
            if self.peek().0 == close {
                break;
            }
            args.push(self.expr()?);
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        let span = self.expect(close, &format!("`,` or {what}"))?;
        Ok((args, span))
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let (tok, span) = self.bump();
        let kind = match tok {
            Tok::Int(n) => ExprKind::Int(n),
            Tok::Duration(s) => ExprKind::Duration(s),
            Tok::Str(s) => ExprKind::Str(s),
            Tok::Ident(name) if name == "true" => ExprKind::Bool(true),
            Tok::Ident(name) if name == "false" => ExprKind::Bool(false),
            Tok::Ident(name) if name == "in" => {
                return Err(ParseError { message: "`in` needs a value on its left".into(), span })
            }
            Tok::Ident(name) => {
                if self.eat(&Tok::LParen) {
                    let (args, close) = self.args(Tok::RParen, "`)`")?;
                    return Ok(Expr { kind: ExprKind::Call { target: None, name, args }, span: span.to(close) });
                }
                ExprKind::Path(vec![name])
            }
            Tok::LBracket => {
                let (items, close) = self.args(Tok::RBracket, "`]`")?;
                return Ok(Expr { kind: ExprKind::List(items), span: span.to(close) });
            }
            Tok::LParen => {
                let inner = self.expr()?;
                let close = self.expect(Tok::RParen, "`)`")?;
                return Ok(Expr { kind: inner.kind, span: span.to(close) });
            }
            other => return Err(ParseError { message: format!("expected a value, found {}", other.describe()), span }),
        };
        Ok(Expr { kind, span })
    }
}

/// Prints an expression back as source, fully parenthesised, so that
/// `parse(print(e))` gives `e` again (up to spans).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Int(n) => write!(f, "{n}"),
            ExprKind::Duration(s) => write!(f, "{s}s"),
            ExprKind::Str(s) => {
                f.write_str("\"")?;
                for ch in s.chars() {
                    match ch {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        '\t' => f.write_str("\\t")?,
                        '\r' => f.write_str("\\r")?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("\"")
            }
            ExprKind::Bool(b) => write!(f, "{b}"),
            ExprKind::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            ExprKind::Path(parts) => f.write_str(&parts.join(".")),
            ExprKind::Unary(UnOp::Not, e) => write!(f, "!({e})"),
            ExprKind::Unary(UnOp::Neg, e) => write!(f, "-({e})"),
            ExprKind::Binary(op, l, r) => write!(f, "({l} {} {r})", op.symbol()),
            ExprKind::Call { target, name, args } => {
                if let Some(t) = target {
                    write!(f, "{t}.")?;
                }
                write!(f, "{name}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_and_binds_tighter_than_or() {
        let e = parse("a || b && c").unwrap();
        assert_eq!(e.to_string(), "(a || (b && c))");
        let e = parse("!a.b && x.y in [1, 2] || m.contains('k')").unwrap();
        assert_eq!(e.to_string(), "((!(a.b) && (x.y in [1, 2])) || m.contains(\"k\"))");
        let e = parse("a + b * 2 >= c - 1").unwrap();
        assert_eq!(e.to_string(), "((a + (b * 2)) >= (c - 1))");
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let e = parse("a && ").unwrap_err();
        assert_eq!(e.span.start, 5);
        let e = parse("a == 1 == 2").unwrap_err();
        assert!(e.message.contains("chain"));
        let e = parse("(a && b").unwrap_err();
        assert!(e.message.contains("`)`"), "{}", e.message);
        let e = parse("f(1,").unwrap_err();
        assert_eq!(e.span.start, 4);
        assert!(parse(&"(".repeat(500)).is_err());
        assert!(parse(&"!".repeat(500)).is_err());
    }
}
