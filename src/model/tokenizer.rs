//! The tokenizer a GGUF file carries (`tokenizer.ggml.*`), rebuilt as a [`tokenizers::Tokenizer`]
//! the way transformers builds one from the same file (`AutoTokenizer.from_pretrained(dir,
//! gguf_file=...)`, transformers' `integrations/gguf/gguf_tokenizer_mapping.py`), so that a text
//! prompt becomes the ids transformers would give it. `fixtures/tokenizer-golden.json` holds those
//! ids for real vocabularies (tests/tokenizer.rs checks every one).
//!
//! Two models are supported:
//! - `gpt2`: byte-level BPE with the file's merges (GPT-2, Llama 3, Qwen2). Text is first split by
//!   the regex `tokenizer.ggml.pre` names ([`split_regex`]), then spelled in the GPT-2 byte
//!   alphabet.
//! - `llama`: SentencePiece BPE (Llama 2, Mistral): `▁` for spaces with one prepended to the text,
//!   merges recovered from the token scores when the file has none, unknown bytes as `<0xNN>`
//!   byte tokens.
//!
//! Tokens the file marks as control (`token_type` 3) and the bos/eos/unk/padding tokens are
//! special; user-defined ones (4) are plain added tokens. Both kinds are matched whole in the
//! text, as transformers does by default: `<|begin_of_text|>` written in a prompt is one token.
//! BOS is prepended when `tokenizer.ggml.add_bos_token` says so; when the key is absent, for
//! `llama` (as llama.cpp and transformers do) and not for `gpt2` (as transformers does; llama.cpp
//! would add it for some `pre` values). EOS is appended when `tokenizer.ggml.add_eos_token` is true.

use std::collections::{HashMap, HashSet};

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, Decoder, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};
use crate::model::gguf::{GgufFile, Keys, MetaValue};

/// llama.cpp's `llama_token_type`: the values of `tokenizer.ggml.token_type` that matter here.
const TOKEN_CONTROL: u64 = 3;
const TOKEN_USER_DEFINED: u64 = 4;

/// Llama 3's split (transformers' `_LLAMA3_SPLIT`; llama.cpp's LLAMA3 pre-tokenizer): digits in
/// runs of at most three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split (transformers' `models/qwen2` PRETOKENIZE_REGEX): single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a `gpt2` vocabulary splits text before BPE, by `tokenizer.ggml.pre`: `Some(regex)` for a
/// split ahead of the byte-level step, `None` for GPT-2's own regex inside it. Only the values
/// whose splits transformers and llama.cpp agree on, and that the golden set covers, are known;
/// any other is refused rather than guessed (a wrong split gives plausible but wrong ids).
fn split_regex(pre: Option<&str>) -> std::result::Result<Option<&'static str>, ()> {
    match pre {
        None | Some("default" | "gpt-2") => Ok(None),
        Some("llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3") => {
            Ok(Some(LLAMA3_SPLIT))
        }
        Some("qwen2" | "deepseek-r1-qwen") => Ok(Some(QWEN2_SPLIT)),
        Some(_) => Err(()),
    }
}

const KNOWN_PRE: &str = "default, gpt-2, llama3, llama-v3, llama-bpe, smaug-bpe, dbrx, falcon3, qwen2, deepseek-r1-qwen";

/// The tokenizer of one GGUF file.
pub struct GgufTokenizer {
    inner: Tokenizer,
    /// Turns one token into the text it stands for, without the sentence-level clean-ups of the
    /// full decoder (SentencePiece's strip of the leading space): a position's piece in reports.
    piece_decoder: DecoderWrapper,
    bos: Option<u32>,
    eos: Option<u32>,
    vocab: usize,
    /// The file's tokens by id. A piece is read from here, not from the tokenizer's reverse
    /// map: a file may list one string under two ids (the tokenizer then maps the string to
    /// one of them only), and every id must still have its piece.
    tokens: Vec<String>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab", &self.vocab)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// Which tokenizer model the file names.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Model {
    /// Byte-level BPE; `Some(regex)` splits first.
    Gpt2(Option<&'static str>),
    /// SentencePiece BPE with byte fallback.
    Llama,
}

impl GgufTokenizer {
    /// The tokenizer `file` describes; `Ok(None)` when it has none (no `tokenizer.ggml.model`,
    /// or `none` as the synthetic models below 260 tokens write). Metadata a tokenizer cannot be
    /// built from is an error naming the file and the key.
    pub fn from_gguf(file: &GgufFile) -> Result<Option<GgufTokenizer>> {
        let k = Keys::of(file);
        let model = match k.opt_str("tokenizer.ggml.model")? {
            None | Some("none") => return Ok(None),
            Some("gpt2") => {
                let pre = k.opt_str("tokenizer.ggml.pre")?;
                let split = split_regex(pre).map_err(|()| {
                    k.err(
                        "tokenizer.ggml.pre",
                        format!(
                            "pre-tokenizer `{}` is not supported (known: {KNOWN_PRE})",
                            pre.unwrap_or_default()
                        ),
                    )
                })?;
                Model::Gpt2(split)
            }
            Some("llama") => Model::Llama,
            Some(other) => {
                return Err(k.err(
                    "tokenizer.ggml.model",
                    format!("tokenizer model `{other}` is not supported (known: gpt2, llama)"),
                ));
            }
        };
        let tokens = k
            .opt_array("tokenizer.ggml.tokens", "strings", |v| {
                v.as_str().map(str::to_string)
            })?
            .ok_or_else(|| k.err("tokenizer.ggml.tokens", "missing"))?;
        if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
            return Err(k.err(
                "tokenizer.ggml.tokens",
                format!("{} tokens: want 1 to 2^32 - 1", tokens.len()),
            ));
        }
        let n = tokens.len();
        let types = k.opt_array("tokenizer.ggml.token_type", "integers", MetaValue::as_u64)?;
        if let Some(t) = &types
            && t.len() != n
        {
            return Err(k.err(
                "tokenizer.ggml.token_type",
                format!("{} entries for {n} tokens", t.len()),
            ));
        }
        let merges = k.opt_array("tokenizer.ggml.merges", "strings", |v| {
            v.as_str().map(str::to_string)
        })?;
        let named: Vec<u32> = [
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
        ]
        .iter()
        .map(|key| k.opt_id(key, n))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
        let bos_id = k.opt_id("tokenizer.ggml.bos_token_id", n)?;
        let eos_id = k.opt_id("tokenizer.ggml.eos_token_id", n)?;
        let add_bos = k
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(model == Model::Llama);
        let add_eos = k.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let bos = match (add_bos, bos_id) {
            (false, _) => None,
            (true, Some(id)) => Some(id),
            (true, None) => {
                return Err(k.err(
                    "tokenizer.ggml.bos_token_id",
                    "missing, but BOS is to be added (tokenizer.ggml.add_bos_token, or a `llama` tokenizer's default)",
                ));
            }
        };
        let eos = match (add_eos, eos_id) {
            (false, _) => None,
            (true, Some(id)) => Some(id),
            (true, None) => {
                return Err(k.err(
                    "tokenizer.ggml.eos_token_id",
                    "missing, but tokenizer.ggml.add_eos_token is true",
                ));
            }
        };

        let built = match model {
            Model::Gpt2(split) => {
                let merges = merges.ok_or_else(|| {
                    k.err(
                        "tokenizer.ggml.merges",
                        "missing (a `gpt2` tokenizer needs them)",
                    )
                })?;
                build_gpt2(&tokens, &merges, split)
            }
            Model::Llama => {
                let scores = k.opt_array("tokenizer.ggml.scores", "numbers", MetaValue::as_f64)?;
                if let Some(s) = &scores
                    && s.len() != n
                {
                    return Err(k.err(
                        "tokenizer.ggml.scores",
                        format!("{} entries for {n} tokens", s.len()),
                    ));
                }
                let merges = match (merges, scores) {
                    (Some(m), _) => m,
                    (None, Some(s)) => merges_from_scores(&tokens, &s),
                    (None, None) => {
                        return Err(k.err(
                            "tokenizer.ggml.scores",
                            "missing, and no tokenizer.ggml.merges either (a `llama` tokenizer needs one of them)",
                        ));
                    }
                };
                build_llama(&tokens, &merges)
            }
        };
        let (mut inner, piece_decoder, spelled) = built.map_err(|e| {
            k.err(
                "tokenizer.ggml.tokens",
                format!("cannot build the tokenizer: {e}"),
            )
        })?;
        add_special(
            &mut inner,
            &tokens,
            types.as_deref(),
            &named,
            &spelled,
            matches!(model, Model::Gpt2(_)),
        )
        .map_err(|e| {
            k.err(
                "tokenizer.ggml.token_type",
                format!("cannot add the special tokens: {e}"),
            )
        })?;
        Ok(Some(GgufTokenizer {
            inner,
            piece_decoder,
            bos,
            eos,
            vocab: n,
            tokens,
        }))
    }

    /// The ids of `text`: BOS/EOS as the file asks, special-token text matched whole.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::input(format!("tokenizing the prompt: {e}")))?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 2);
        ids.extend(self.bos);
        ids.extend_from_slice(enc.get_ids());
        ids.extend(self.eos);
        Ok(ids)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The text token `id` stands for (`" world"`, `"\n"`, `"<|im_start|>"`); bytes that are
    /// not whole UTF-8 characters on their own come out as U+FFFD. `None` past the vocabulary.
    pub fn piece(&self, id: u32) -> Option<String> {
        let token = self.tokens.get(id as usize)?;
        self.piece_decoder
            .decode(vec![token.clone()])
            .ok()
            .or_else(|| Some(token.clone()))
    }

    /// [`Self::piece`] of every id, or `None` when some id is past the vocabulary.
    pub fn pieces(&self, ids: &[u32]) -> Option<Vec<String>> {
        ids.iter().map(|&id| self.piece(id)).collect()
    }
}

/// The tokenizer of the GGUF file at `path` (see [`GgufTokenizer::from_gguf`]).
pub fn open(path: &std::path::Path) -> Result<Option<GgufTokenizer>> {
    GgufTokenizer::from_gguf(&GgufFile::open(path)?)
}

/// A forward's prompt: the ids, and each position's piece when the model has a tokenizer that
/// knows every id (empty otherwise: ids from elsewhere, or a model without a tokenizer).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prompt {
    pub tokens: Vec<u32>,
    pub pieces: Vec<String>,
}

impl Prompt {
    /// `text` tokenized with the tokenizer of the model at `model`. An error when the model has
    /// none, or when the text gives no token at all.
    pub fn from_text(model: &std::path::Path, text: &str) -> Result<Prompt> {
        let tok = open(model)?.ok_or_else(|| {
            Error::input(format!(
                "{}: the model has no tokenizer (no tokenizer.ggml.model, or `none`): give token ids instead",
                model.display()
            ))
        })?;
        let tokens = tok.encode(text)?;
        if tokens.is_empty() {
            return Err(Error::input(format!(
                "the prompt {text:?} gives no tokens with {}'s tokenizer (and it adds no BOS)",
                model.display()
            )));
        }
        let pieces = tok.pieces(&tokens).unwrap_or_default();
        Ok(Prompt { tokens, pieces })
    }

    /// Ids given as such, with their pieces when the model at `model` has a tokenizer that
    /// knows them all. Tokenizer metadata that cannot be read only costs the pieces: the
    /// forward needs the ids alone.
    pub fn from_ids(model: &std::path::Path, tokens: Vec<u32>) -> Prompt {
        let pieces = match open(model) {
            Ok(Some(tok)) => tok.pieces(&tokens).unwrap_or_default(),
            _ => Vec::new(),
        };
        Prompt { tokens, pieces }
    }
}

/// Built parts: the tokenizer, the piece decoder, and the vocabulary as the model spells it.
type Built = (Tokenizer, DecoderWrapper, HashMap<String, u32>);

/// GPT-2's byte alphabet (`bytes_to_unicode`): printable Latin-1 bytes stand for themselves,
/// the others for U+0100 onwards in byte order.
fn byte_alphabet() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        let c = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        out[b as usize] = char::from_u32(c).unwrap_or('\u{fffd}');
    }
    out
}

fn build_gpt2(tokens: &[String], merges: &[String], split: Option<&str>) -> Result<Built, String> {
    // A token already spelled in the byte alphabet stays as it is; any other (a control token
    // written in plain UTF-8) is respelled byte by byte, as transformers' byte_level_tokenizer
    // does, so that the BPE sees one alphabet.
    let alphabet = byte_alphabet();
    let in_alphabet: HashSet<char> = alphabet.iter().copied().collect();
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        let spelled = if t.chars().all(|c| in_alphabet.contains(&c)) {
            t.clone()
        } else {
            t.bytes().map(|b| alphabet[b as usize]).collect()
        };
        vocab.insert(spelled, id as u32);
    }
    let pairs = split_merges(merges)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.clone().into_iter().collect::<Vocab>(), pairs)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tok = Tokenizer::new(bpe);
    let pre: PreTokenizerWrapper = match split {
        None => ByteLevel::new(false, true, true).into(),
        Some(re) => PreSequence::new(vec![
            Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| e.to_string())?
            .into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
    };
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(ByteLevel::default()));
    Ok((tok, ByteLevel::default().into(), vocab))
}

fn build_llama(tokens: &[String], merges: &[String]) -> Result<Built, String> {
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), id as u32);
    }
    let pairs = split_merges(merges)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.clone().into_iter().collect::<Vocab>(), pairs)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tok = Tokenizer::new(bpe);
    // transformers' LlamaTokenizer (legacy = false): one `▁` before the text, none after
    // special tokens; spaces become `▁` and are not split on.
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, false)));
    let pieces = || -> Result<Vec<DecoderWrapper>, String> {
        Ok(vec![
            Replace::new("▁", " ").map_err(|e| e.to_string())?.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ])
    };
    let mut full = pieces()?;
    full.push(tokenizers::decoders::strip::Strip::new(' ', 1, 0).into());
    tok.with_decoder(Some(DecoderSequence::new(full)));
    Ok((tok, DecoderSequence::new(pieces()?).into(), vocab))
}

/// `"a b"` merges as pairs.
fn split_merges(merges: &[String]) -> Result<Vec<(String, String)>, String> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok((a.to_string(), b.to_string())),
            _ => Err(format!(
                "merge {i} `{m}` is not two tokens separated by one space"
            )),
        })
        .collect()
}

/// The merges a SentencePiece vocabulary implies (transformers' `generate_merges` with scores):
/// every split of a token into two tokens, best score first; ties by the lengths of the two
/// halves (longer first), then by file order. Lengths are in characters, as in Python.
fn merges_from_scores(tokens: &[String], scores: &[f64]) -> Vec<String> {
    // Python dicts: a repeated token keeps its first place in the order and its last id/score.
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut score: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, (t, &s)) in tokens.iter().zip(scores).enumerate() {
        if id.insert(t, i).is_none() {
            order.push(t);
        }
        score.insert(t, s);
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for t in order {
        let mut local: Vec<(&str, &str, f64)> = t
            .char_indices()
            .skip(1)
            .map(|(at, _)| t.split_at(at))
            .filter(|(l, r)| id.contains_key(l) && id.contains_key(r))
            .map(|(l, r)| (l, r, score[t]))
            .collect();
        local.sort_by_key(|(l, r, _)| (id[l], id[r]));
        merges.extend(local);
    }
    // Python's sorted(..., reverse=True) is stable: equal keys keep their order.
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| format!("{l} {r}"))
        .collect()
}

/// Register the file's special and user-defined tokens as added tokens (matched whole in text),
/// as transformers' `add_gguf_special_tokens` does. In a byte-level vocabulary a control token
/// spelled outside the byte alphabet is one llama.cpp mislabelled and is skipped, like there.
fn add_special(
    tok: &mut Tokenizer,
    tokens: &[String],
    types: Option<&[u64]>,
    named: &[u32],
    spelled: &HashMap<String, u32>,
    byte_level: bool,
) -> Result<(), String> {
    let alphabet: HashSet<char> = byte_alphabet().into_iter().collect();
    let spelled_ok = |t: &str| !byte_level || t.chars().all(|c| alphabet.contains(&c));
    let mut special: Vec<AddedToken> = named
        .iter()
        .map(|&id| &tokens[id as usize])
        .filter(|t| spelled.contains_key(t.as_str()))
        .map(|t| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    let mut user = Vec::new();
    for (t, &ty) in tokens.iter().zip(types.unwrap_or(&[])) {
        if ty == TOKEN_CONTROL && spelled_ok(t) {
            special.push(AddedToken::from(t.clone(), true).normalized(false));
        } else if ty == TOKEN_USER_DEFINED && spelled.contains_key(t.as_str()) {
            user.push(AddedToken::from(t.clone(), false).normalized(false));
        }
    }
    tok.add_special_tokens(special).map_err(|e| e.to_string())?;
    tok.add_tokens(user).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[0xad], 'Ń');
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn merges_from_scores_orders_like_transformers() {
        // Best score first; "abc" splits two ways at one score, and the longer left half wins.
        // The expected list is transformers' generate_merges on the same input.
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        assert_eq!(
            merges_from_scores(&tokens, &scores),
            ["a b", "b c", "ab c", "a bc"]
        );
    }

    #[test]
    fn unknown_pre_is_refused() {
        assert!(split_regex(Some("deepseek-llm")).is_err());
        assert_eq!(split_regex(None), Ok(None));
        assert_eq!(split_regex(Some("llama-bpe")), Ok(Some(LLAMA3_SPLIT)));
    }
}
