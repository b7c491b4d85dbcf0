//! Free text as the rules see it: one normalisation, used on both sides of every
//! text match — the keyword lists and string literals at load, the request's
//! memo and payee name once per request.
//!
//! Two forms come out of one pass over the text:
//! - the **normalised** text: Unicode NFKC (full-width letters become ASCII,
//!   compatibility ideographs and radicals become ordinary ones), lower case,
//!   Traditional Chinese characters made Simplified (OpenCC's character table),
//!   the common variant characters unified (帐 → 账, …), invisible format
//!   characters (zero-width spaces and joiners, soft hyphens, BOM, variation
//!   selectors) removed, runs of white space made one space, trimmed.
//!   `==`, `startsWith`, `endsWith`, `matches` and pattern lists read this.
//! - the **compact** text: the normalised text with white space, punctuation
//!   and symbols removed, remembering where they were ([`TextView::breaks`]).
//!   Keyword lists and `contains` read this, so `刷 单`, `刷-单` and `刷单` are
//!   one word — but a keyword that spans a removed separator matches only when
//!   it covers the spaced pieces whole ([`TextView::whole`]): `安全 账户` and
//!   `安 全 账 户` match `安全账户`, `资金安全 账户余额` does not.
//!
//! Must not allocate per request once its buffers have grown ([`FoldedText::fill`]
//! reuses them), read files, or know about fields and rules.

use std::collections::HashMap;
use std::sync::LazyLock;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// The CJK ideographs looked up in a dense table (Extension A and the URO).
const DENSE_FIRST: u32 = 0x3400;
const DENSE_LAST: u32 = 0x9FFF;

/// Traditional → Simplified, character by character, from OpenCC's
/// `TSCharacters` table (shipped by the `hanconv` crate), then the variants.
struct Simplifier {
    /// `dense[c - DENSE_FIRST]` is the replacement of `c`, or `c` itself.
    dense: Box<[char]>,
    /// Replacements of characters outside the dense range.
    sparse: HashMap<char, char>,
}

/// Variant characters that are not Traditional forms, unified to the form the
/// keyword lists are written in. Each is a variant seen in everyday writing or
/// in coached memos; the Simplified target is the standard form.
const VARIANTS: &[(char, char)] = &[
    ('帐', '账'), // 帐户 / 帐号 — the everyday form of 账户 / 账号
    ('戸', '户'), // Japanese form
    ('欵', '款'),
    ('滙', '汇'),
    ('匯', '汇'),
    ('羣', '群'),
    ('峯', '峰'),
    ('祕', '秘'),
    ('凈', '净'),
    ('衞', '卫'),
    ('綫', '线'),
    ('錢', '钱'),
    ('囯', '国'),
    ('穫', '获'),
];

impl Simplifier {
    fn build() -> Simplifier {
        let mut dense: Vec<char> =
            (DENSE_FIRST..=DENSE_LAST).map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
        let mut sparse = HashMap::new();
        let table = hanconv::Dictionary::TSCharacters.iter().filter_map(|(from, to)| {
            let mut f = from.chars();
            let mut t = to.chars();
            match (f.next(), f.next(), t.next(), t.next()) {
                (Some(from), None, Some(to), None) => Some((from, to)),
                _ => None,
            }
        });
        for (from, to) in table.chain(VARIANTS.iter().copied()) {
            // A variant may map a character the table already simplified.
            let to = Self::lookup(&dense, &sparse, to);
            match u32::from(from) {
                c @ DENSE_FIRST..=DENSE_LAST => dense[(c - DENSE_FIRST) as usize] = to,
                _ => {
                    sparse.insert(from, to);
                }
            }
        }
        // A table entry's target may itself be a variant (臺 → 台 is final, 帳 → 帐 → 账 is not).
        for i in 0..dense.len() {
            let once = dense[i];
            dense[i] = Self::lookup(&dense, &sparse, once);
        }
        Simplifier { dense: dense.into_boxed_slice(), sparse }
    }

    fn lookup(dense: &[char], sparse: &HashMap<char, char>, c: char) -> char {
        match u32::from(c) {
            u @ DENSE_FIRST..=DENSE_LAST => dense[(u - DENSE_FIRST) as usize],
            _ => sparse.get(&c).copied().unwrap_or(c),
        }
    }

    #[inline]
    fn simplify(&self, c: char) -> char {
        Self::lookup(&self.dense, &self.sparse, c)
    }
}

static SIMPLIFIER: LazyLock<Simplifier> = LazyLock::new(Simplifier::build);

/// Builds the conversion tables now rather than on the first request.
pub fn warm_up() {
    LazyLock::force(&SIMPLIFIER);
}

/// What one character is to the normaliser.
enum Class {
    /// Kept (after lower-casing and simplifying).
    Keep,
    /// White space: one space in the normalised text, a break in the compact one.
    Space,
    /// Punctuation or a symbol: kept in the normalised text, a break in the compact one.
    Mark,
    /// Invisible: removed from both.
    Drop,
}

#[inline]
fn class(c: char) -> Class {
    if c.is_ascii() {
        return if c.is_ascii_alphanumeric() {
            Class::Keep
        } else if c.is_ascii_whitespace() {
            Class::Space
        } else if c.is_ascii_control() {
            Class::Drop
        } else {
            Class::Mark
        };
    }
    if (DENSE_FIRST..=DENSE_LAST).contains(&u32::from(c)) {
        return Class::Keep;
    }
    if c.is_whitespace() {
        return Class::Space;
    }
    match c.general_category_group() {
        GeneralCategoryGroup::Punctuation | GeneralCategoryGroup::Symbol => Class::Mark,
        GeneralCategoryGroup::Separator => Class::Space,
        GeneralCategoryGroup::Other => Class::Drop,
        GeneralCategoryGroup::Mark if c.general_category() == GeneralCategory::NonspacingMark && is_selector(c) => {
            Class::Drop
        }
        _ => Class::Keep,
    }
}

fn is_selector(c: char) -> bool {
    matches!(u32::from(c), 0xFE00..=0xFE0F | 0xE0100..=0xE01EF | 0x180B..=0x180F)
}

/// True when NFKC leaves every character of `s` as it is without looking it
/// up: ASCII and the CJK ideographs of the dense table.
#[inline]
fn nfkc_stable(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii() || (DENSE_FIRST..=DENSE_LAST).contains(&u32::from(c)))
}

/// A text's normalised and compact forms, in buffers reused from request to
/// request.
#[derive(Debug, Default, Clone)]
pub struct FoldedText {
    normalised: String,
    compact: String,
    /// Byte offsets into `compact` where a separator was removed.
    breaks: Vec<u32>,
    /// NFKC output when the text needed it.
    scratch: String,
}

impl FoldedText {
    pub fn new(raw: &str) -> FoldedText {
        let mut f = FoldedText::default();
        f.fill(raw);
        f
    }

    /// Normalises `raw` into this text's buffers (allocating only if they must grow).
    pub fn fill(&mut self, raw: &str) {
        self.normalised.clear();
        self.compact.clear();
        self.breaks.clear();
        if raw.is_empty() {
            return;
        }
        let simplifier = &*SIMPLIFIER;
        let source = if nfkc_stable(raw) {
            raw
        } else {
            self.scratch.clear();
            self.scratch.extend(raw.nfkc());
            &self.scratch
        };
        // A separator seen since the last kept character, not yet written.
        let mut pending_space = false;
        let mut pending_break = false;
        for c in source.chars() {
            match class(c) {
                Class::Drop => {}
                Class::Space => {
                    pending_space = !self.normalised.is_empty();
                    pending_break = true;
                }
                Class::Mark => {
                    if pending_space {
                        self.normalised.push(' ');
                        pending_space = false;
                    }
                    self.normalised.push(c);
                    pending_break = true;
                }
                Class::Keep => {
                    if pending_space {
                        self.normalised.push(' ');
                        pending_space = false;
                    }
                    if pending_break {
                        if !self.compact.is_empty() {
                            self.breaks.push(self.compact.len() as u32);
                        }
                        pending_break = false;
                    }
                    if c.is_ascii() {
                        let c = c.to_ascii_lowercase();
                        self.normalised.push(c);
                        self.compact.push(c);
                    } else {
                        for l in c.to_lowercase() {
                            let s = simplifier.simplify(l);
                            self.normalised.push(s);
                            self.compact.push(s);
                        }
                    }
                }
            }
        }
    }

    pub fn view<'a>(&'a self, raw: &'a str) -> TextView<'a> {
        TextView { raw, normalised: &self.normalised, compact: &self.compact, breaks: &self.breaks }
    }

    pub fn normalised(&self) -> &str {
        &self.normalised
    }

    pub fn compact(&self) -> &str {
        &self.compact
    }
}

/// The normalised form of `raw` (for literals and list items at load).
pub fn normalise(raw: &str) -> String {
    FoldedText::new(raw).normalised
}

/// The compact form of `raw` (for keywords at load).
pub fn compact(raw: &str) -> String {
    FoldedText::new(raw).compact
}

/// A request's text in all its forms, borrowed for one evaluation.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextView<'a> {
    /// Exactly as sent.
    pub raw: &'a str,
    pub normalised: &'a str,
    pub compact: &'a str,
    /// Byte offsets into `compact` where separators were removed.
    pub breaks: &'a [u32],
}

impl TextView<'_> {
    /// May a keyword found at `compact[start..end]` count? Always when it lies
    /// within one spaced piece; when it spans removed separators, only if it
    /// begins at the start of a piece and ends at the end of one.
    #[inline]
    pub fn whole(&self, start: usize, end: usize) -> bool {
        if self.breaks.is_empty() {
            return true;
        }
        let inner = self.breaks.iter().any(|&b| (start as u32) < b && b < end as u32);
        if !inner {
            return true;
        }
        let edge = |at: usize| at == 0 || at == self.compact.len() || self.breaks.contains(&(at as u32));
        edge(start) && edge(end)
    }

    /// Does the compact text contain the (compact) `needle` as a whole keyword?
    pub fn contains(&self, needle: &str) -> bool {
        if needle.is_empty() {
            return true;
        }
        let mut from = 0;
        while let Some(i) = self.compact[from..].find(needle) {
            let start = from + i;
            if self.whole(start, start + needle.len()) {
                return true;
            }
            from = start + self.compact[start..].chars().next().map_or(1, char::len_utf8);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(f: &FoldedText) -> TextView<'_> {
        f.view("")
    }

    #[test]
    fn normalises_width_case_script_variants_and_invisibles() {
        let cases = [
            ("安全账户", "安全账户"),
            ("安全賬戶", "安全账户"),
            ("转到安全帐户", "转到安全账户"),
            ("安\u{200b}全账户", "安全账户"),
            ("ａｎｑｕａｎ账户", "anquan账户"),
            ("  Safe\tACCOUNT \n", "safe account"),
            ("刷 单 返 利", "刷 单 返 利"),
            ("⼀", "一"),
            ("退款\u{FE0F}", "退款"),
            ("", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn compact_removes_separators_and_remembers_them() {
        let f = FoldedText::new("刷 单，返-利!");
        assert_eq!(f.compact(), "刷单返利");
        assert_eq!(f.breaks, [3, 6, 9]);
        assert_eq!(compact("ａｎｑｕａｎ 账户"), "anquan账户");
    }

    #[test]
    fn a_keyword_across_separators_must_cover_whole_pieces() {
        let hit = |text: &str, kw: &str| view(&FoldedText::new(text)).contains(&compact(kw));
        assert!(hit("安全 账户", "安全账户"));
        assert!(hit("安 全 账 户", "安全账户"));
        assert!(hit("请转到 安全 账户", "安全账户"));
        assert!(hit("转到安全账户里", "安全账户"));
        assert!(hit("刷 单 返 利", "刷单"));
        assert!(hit("safe account", "safe account"));
        assert!(hit("SAFE-ACCOUNT", "safe account"));
        assert!(!hit("资金安全 账户余额", "安全账户"));
        assert!(!hit("账户余额", "安全账户"));
        assert!(!hit("办公 安装费", "公安"));
        assert!(!hit("unsafe accounting", "safe account"));
        assert!(hit("", ""));
    }

    #[test]
    fn buffers_are_reused() {
        let mut f = FoldedText::new("一段比较长的转账用途说明 with some words");
        let capacity = (f.normalised.capacity(), f.compact.capacity());
        f.fill("短");
        assert_eq!((f.normalised(), f.compact()), ("短", "短"));
        assert_eq!((f.normalised.capacity(), f.compact.capacity()), capacity);
    }
}
