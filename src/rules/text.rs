//! Free text as the rules see it: one normalisation, used on both sides of every
//! text match — keyword list items and string literals at load, the request's
//! memo and payee name once per request.
//!
//! Normalising a text: Unicode NFKC (full-width letters become ASCII,
//! compatibility ideographs and radicals become ordinary ones), lower case,
//! Traditional Chinese characters made Simplified (OpenCC's character table),
//! the common variant characters unified (帐 → 账, …), invisible format
//! characters (zero-width spaces and joiners, soft hyphens, BOM, variation
//! selectors, combining marks left over) removed, and white space, punctuation and symbols removed — so
//! `刷 单`, `刷-单`, `刷\u{200b}单` and `刷单` are one text. Where separators were
//! removed is remembered ([`TextView::breaks`]): a keyword that spans one
//! matches only when its last word is whole ([`TextView::whole`]): `安全 账户`,
//! `转到安全 账户` and `安 全 账 户` match `安全账户`; `安全 账户余额` does not.
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
    /// `own_form[cp - 0x3000]`, for every code point with a three-byte UTF-8
    /// lead E3..E9: it is a dense ideograph and its own simplified form (the
    /// fast path of [`FoldedText::fold`]).
    own_form: Box<[bool]>,
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

impl std::fmt::Debug for Simplifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Simplifier")
    }
}

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
        let own_form = (0x3000..=DENSE_LAST)
            .map(|cp| cp >= DENSE_FIRST && u32::from(dense[(cp - DENSE_FIRST) as usize]) == cp)
            .collect();
        Simplifier { dense: dense.into_boxed_slice(), own_form, sparse }
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
    /// White space, punctuation or a symbol: removed, leaving a break.
    Separator,
    /// Invisible: removed, leaving no trace.
    Drop,
}

#[inline]
fn class(c: char) -> Class {
    if c.is_ascii() {
        return if c.is_ascii_alphanumeric() {
            Class::Keep
        } else if c.is_ascii_control() && !c.is_ascii_whitespace() {
            Class::Drop
        } else {
            Class::Separator
        };
    }
    if in_dense(c) {
        return Class::Keep;
    }
    if c.is_whitespace() {
        return Class::Separator;
    }
    match c.general_category_group() {
        GeneralCategoryGroup::Punctuation | GeneralCategoryGroup::Symbol | GeneralCategoryGroup::Separator => {
            Class::Separator
        }
        GeneralCategoryGroup::Other => Class::Drop,
        // Combining marks NFKC could not compose onto a letter: decoration
        // (and the stuff of "zalgo" evasion), and variation selectors.
        GeneralCategoryGroup::Mark
            if matches!(c.general_category(), GeneralCategory::NonspacingMark | GeneralCategory::EnclosingMark) =>
        {
            Class::Drop
        }
        _ => Class::Keep,
    }
}

/// One of the CJK ideographs of the dense table (which NFKC leaves alone).
#[inline]
fn in_dense(c: char) -> bool {
    (DENSE_FIRST..=DENSE_LAST).contains(&u32::from(c))
}

/// A text normalised, in buffers reused from request to request.
#[derive(Debug, Clone)]
pub struct FoldedText {
    /// The tables, looked up once when the buffers are made.
    simplifier: &'static Simplifier,
    text: String,
    /// Byte offsets into `text` where separators were removed.
    breaks: Vec<u32>,
    /// NFKC output when the text needed it.
    scratch: String,
}

impl Default for FoldedText {
    fn default() -> FoldedText {
        FoldedText { simplifier: &SIMPLIFIER, text: String::new(), breaks: Vec::new(), scratch: String::new() }
    }
}

impl FoldedText {
    pub fn new(raw: &str) -> FoldedText {
        let mut f = FoldedText::default();
        f.fill(raw);
        f
    }

    /// Normalises `raw` into this text's buffers (allocating only if they must grow).
    #[inline]
    pub fn fill(&mut self, raw: &str) {
        if !self.fold(raw, false) {
            // A character NFKC may change: normalise the whole text first.
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            scratch.extend(raw.nfkc());
            self.fold(&scratch, true);
            self.scratch = scratch;
            self.recompose();
        }
    }

    /// Removing separators can put side by side what NFC composes (Hangul
    /// jamo: `ㄱ ㅡ` becomes the syllable `그`): compose it now, so that
    /// normalising is idempotent, and drop the breaks a composed character spans.
    fn recompose(&mut self) {
        if unicode_normalization::is_nfc_quick(self.text.chars()) == unicode_normalization::IsNormalized::Yes {
            return;
        }
        let composed: String = self.text.nfc().collect();
        let original: Vec<(usize, char)> = self.text.char_indices().collect();
        let mut breaks = Vec::with_capacity(self.breaks.len());
        let (mut i, mut at) = (0, 0);
        for c in composed.chars() {
            // How many original characters this one stands for.
            let n = if original.get(i).is_some_and(|&(_, o)| o == c) { 1 } else { c.nfd().count() };
            let start = original.get(i).map_or(self.text.len(), |&(b, _)| b);
            if self.breaks.contains(&(start as u32)) {
                breaks.push(at as u32);
            }
            i += n.max(1);
            at += c.len_utf8();
        }
        breaks.retain(|&b| b > 0 && (b as usize) < composed.len());
        self.text = composed;
        self.breaks = breaks;
    }

    /// Empties the text.
    pub fn clear(&mut self) {
        self.text.clear();
        self.breaks.clear();
    }

    /// One pass over `source`. Unless `nfkc_done`, stops and returns false at
    /// the first character NFKC may change (anything but ASCII and the dense
    /// ideographs, which it leaves alone). Runs of characters that are their
    /// own normal form are copied as one piece.
    fn fold(&mut self, source: &str, nfkc_done: bool) -> bool {
        self.clear();
        if source.is_empty() {
            return true;
        }
        let simplifier = self.simplifier;
        // A separator was removed since the last kept character.
        let mut pending_break = false;
        // Start of the run of unchanged characters not yet copied (`NO_RUN`: none).
        const NO_RUN: usize = usize::MAX;
        let mut run = NO_RUN;
        let bytes = source.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            // Fast paths, the common case: lower-case ASCII letters and digits,
            // and ideographs that are their own simplified form, extend the run.
            let same = match bytes[i..] {
                [b0 @ 0xE3..=0xE9, b1, b2, ..] => {
                    // U+3000..U+9FFF: the lead's low bits are 3..9.
                    let cp = (u32::from(b0 & 0x0F) << 12) | (u32::from(b1 & 0x3F) << 6) | u32::from(b2 & 0x3F);
                    if simplifier.own_form.get((cp - 0x3000) as usize) == Some(&true) {
                        3
                    } else {
                        0
                    }
                }
                [b, ..] if b.is_ascii_lowercase() || b.is_ascii_digit() => 1,
                _ => 0,
            };
            if same > 0 {
                if run == NO_RUN {
                    self.start_piece(&mut pending_break);
                    run = i;
                }
                i += same;
                continue;
            }
            let c = source[i..].chars().next().unwrap_or(char::REPLACEMENT_CHARACTER);
            let len = c.len_utf8();
            if !nfkc_done && !c.is_ascii() && !in_dense(c) {
                return false;
            }
            let at = i;
            i += len;
            let class = class(c);
            if run != NO_RUN {
                self.text.push_str(&source[run..at]);
                run = NO_RUN;
            }
            match class {
                Class::Drop => {}
                Class::Separator => pending_break = true,
                Class::Keep => {
                    self.start_piece(&mut pending_break);
                    if c.is_ascii() {
                        self.text.push(c.to_ascii_lowercase());
                    } else if in_dense(c) {
                        // Ideographs have no case.
                        self.text.push(simplifier.simplify(c));
                    } else {
                        for l in c.to_lowercase() {
                            self.text.push(simplifier.simplify(l));
                        }
                    }
                }
            }
        }
        if run != NO_RUN {
            self.text.push_str(&source[run..]);
        }
        true
    }

    /// Before the first kept character after separators: remember the break.
    #[inline]
    fn start_piece(&mut self, pending_break: &mut bool) {
        if std::mem::take(pending_break) && !self.text.is_empty() {
            self.breaks.push(self.text.len() as u32);
        }
    }

    pub fn view<'a>(&'a self, raw: &'a str) -> TextView<'a> {
        TextView { raw, text: &self.text, breaks: &self.breaks }
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The normalised form of `raw` (for literals and keywords at load).
pub fn normalise(raw: &str) -> String {
    FoldedText::new(raw).text
}

/// A request's text, raw and normalised, borrowed for one evaluation.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextView<'a> {
    /// Exactly as sent.
    pub raw: &'a str,
    /// Normalised.
    pub text: &'a str,
    /// Byte offsets into `text` where separators were removed.
    pub breaks: &'a [u32],
}

impl TextView<'_> {
    /// May a keyword found at `text[start..end]` count? Always when it lies
    /// within one spaced piece. When it spans removed separators it must end
    /// where a piece ends (its last word is whole: `安全 账户余额` is not
    /// `安全账户`), and begin where a piece begins unless it follows Chinese
    /// text (pieces of Chinese are phrases: `转到安全 账户` is; pieces of
    /// English are words: `unsafe account` is not `safe account`).
    #[inline]
    pub fn whole(&self, start: usize, end: usize) -> bool {
        if self.breaks.is_empty() {
            return true;
        }
        let inner = self.breaks.iter().any(|&b| (start as u32) < b && b < end as u32);
        if !inner {
            return true;
        }
        let edge = |at: usize| at == 0 || at == self.text.len() || self.breaks.contains(&(at as u32));
        let after_a_word = self.text[..start].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric());
        edge(end) && (edge(start) || !after_a_word)
    }

    /// Does the text contain the (normalised) `needle` as a whole keyword?
    pub fn contains(&self, needle: &str) -> bool {
        if needle.is_empty() {
            return true;
        }
        let mut from = 0;
        while let Some(i) = self.text[from..].find(needle) {
            let start = from + i;
            if self.whole(start, start + needle.len()) {
                return true;
            }
            from = start + self.text[start..].chars().next().map_or(1, char::len_utf8);
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
    fn normalises_width_case_script_variants_separators_and_invisibles() {
        let cases = [
            ("安全账户", "安全账户"),
            ("安全賬戶", "安全账户"),
            ("转到安全帐户", "转到安全账户"),
            ("安\u{200b}全账户", "安全账户"),
            ("ａｎｑｕａｎ账户", "anquan账户"),
            ("  Safe\tACCOUNT \n", "safeaccount"),
            ("刷 单，返-利!", "刷单返利"),
            ("⼀", "一"),
            ("退款\u{FE0F}🙂", "退款"),
            ("", ""),
            // Jamo put side by side by removing the space compose, as a second pass would.
            ("ㄱ ￚ", "그"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn remembers_where_separators_were() {
        let f = FoldedText::new("刷 单，返-利!");
        assert_eq!(f.breaks, [3, 6, 9]);
        assert!(FoldedText::new(" 刷单 ").breaks.is_empty(), "leading and trailing separators are no breaks");
    }

    #[test]
    fn a_keyword_across_separators_must_cover_whole_pieces() {
        let hit = |text: &str, kw: &str| view(&FoldedText::new(text)).contains(&normalise(kw));
        assert!(hit("安全 账户", "安全账户"));
        assert!(hit("安 全 账 户", "安全账户"));
        assert!(hit("请转到 安全 账户", "安全账户"));
        assert!(hit("转到安全账户里", "安全账户"));
        assert!(hit("刷 单 返 利", "刷单"));
        assert!(hit("转到安全 账户", "安全账户"), "ends where a piece ends, after Chinese text");
        assert!(!hit("安全 账户余额", "安全账户"), "its last word is not whole");
        assert!(!hit("安全 账户里", "安全账户"), "the price of the rule: a particle after the keyword");
        assert!(!hit("unsafe account", "safe account"), "an English word cut at its start");
        assert!(hit("safe account", "safe account"));
        assert!(hit("SAFE-ACCOUNT", "safe account"));
        assert!(!hit("资金安全 账户余额", "安全账户"));
        assert!(!hit("账户余额", "安全账户"));
        assert!(!hit("办公 安装费", "公安"));
        assert!(!hit("unsafe accounting", "safe account"));
        assert!(hit("", ""));
    }

    proptest::proptest! {
        #[test]
        fn normalising_is_stable_and_never_panics(raw in "\\PC{0,40}|[ 安全账戶帳賬ａＡa-z\u{200b}，!]{0,12}") {
            let f = FoldedText::new(&raw);
            // Normalising twice changes nothing.
            proptest::prop_assert_eq!(normalise(f.text()), f.text());
            let v = view(&f);
            let mut last = 0;
            for &b in v.breaks {
                proptest::prop_assert!(b as usize > last && (b as usize) < v.text.len());
                proptest::prop_assert!(v.text.is_char_boundary(b as usize));
                last = b as usize;
            }
            proptest::prop_assert!(v.contains(f.text()));
        }
    }

    #[test]
    fn buffers_are_reused() {
        let mut f = FoldedText::new("一段比较长的转账用途说明 with some words");
        let capacity = (f.text.capacity(), f.breaks.capacity());
        f.fill("短 句");
        assert_eq!(f.text(), "短句");
        assert_eq!((f.text.capacity(), f.breaks.capacity()), capacity);
    }
}
