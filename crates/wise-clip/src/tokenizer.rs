//! CLIP text tokenizer: text → exactly `context_length` token ids, as the text tower expects.
//!
//! There is **one** tokenization pipeline, the one Hugging Face's `CLIPTokenizerFast` runs,
//! built from the `tokenizers` crate's own components:
//!
//! * normalizer: NFC, every run of whitespace → one space, lowercase;
//! * pre-tokenizer: CLIP's word regex (`'s|'t|…|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`, keeping the
//!   matches and dropping what is between them), then byte-level mapping of each word;
//! * model: BPE whose word-final symbols carry the `</w>` suffix, with `<|startoftext|>` and
//!   `<|endoftext|>` as special tokens.
//!
//! A model directory that ships a `tokenizer.json` (every HF CLIP checkpoint does) is loaded as
//! is; one with the slow tokenizer's `vocab.json` and `merges.txt` only gets the same pipeline
//! around them; otherwise [`ClipTokenizer::openai`] assembles it around the OpenAI
//! BPE vocabulary embedded in this crate (`assets/bpe_simple_vocab_16e6.txt.gz`, the file
//! OpenAI's CLIP and open_clip ship), with the vocabulary laid out as theirs: the 256 byte
//! symbols, the same with `</w>`, one token per merge, then the two special tokens (49,408 ids).
//! Either way, [`ClipTokenizer::encode`] then does what `CLIPTokenizerFast(padding="max_length",
//! truncation=True)` does: `<|startoftext|>`, the text's tokens cut to fit, `<|endoftext|>`, and
//! pad tokens up to the context length. The text tower pools at the EOT token, so truncation
//! always keeps it last.
//!
//! Known, deliberate difference from OpenAI's / open_clip's own Python tokenizer: that one also
//! runs `ftfy.fix_text` and HTML unescaping before lowercasing. HF's fast tokenizer, which the
//! HF checkpoints were published with, does not, and neither do we; for ordinary text the ids
//! are the same. open_clip pads with id 0, HF with the tokenizer's pad token: both are after
//! the EOT, so with the causal text mask they do not change the text features.

use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::{Error, Result};

/// The OpenAI CLIP BPE merges (gzipped text, one merge per line after a version header).
const OPENAI_BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");
/// Number of merges CLIP uses (OpenAI's `lines[1 : 49152 - 256 - 2 + 1]`): with the 512 byte
/// symbols and the 2 special tokens they make the 49,408-token vocabulary.
const OPENAI_MERGES: usize = 49152 - 256 - 2;
/// Size of the OpenAI CLIP vocabulary, special tokens included.
pub const OPENAI_VOCAB_SIZE: usize = 49408;
/// The token that opens every sequence.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// The token that closes every sequence (and, in HF's CLIP, pads it).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// CLIP's word-splitting regex, with the special tokens first, as in HF's `tokenizer.json`.
const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const WORD_SUFFIX: &str = "</w>";
const OPENAI_SOURCE: &str = "OpenAI CLIP BPE (built in)";

/// A CLIP tokenizer producing fixed-length id sequences. Cheap to share across threads.
#[derive(Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    context_length: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    source_name: String,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("source", &self.source_name)
            .field("context_length", &self.context_length)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// The special tokens a tokenizer directory may name (`tokenizer_config.json`,
/// `special_tokens_map.json`).
#[derive(Default)]
struct SpecialTokens {
    bos: Option<String>,
    eos: Option<String>,
    pad: Option<String>,
}

impl ClipTokenizer {
    /// `tokenizer.json` in `dir` when there is one; else its `vocab.json` and `merges.txt`
    /// (what transformers' slow `CLIPTokenizer` saves); else the OpenAI BPE vocabulary
    /// shipped in this crate.
    pub fn for_model_dir(dir: &Path, context_length: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if path.is_file() {
            Self::from_tokenizer_json(&path, context_length)
        } else if vocab.is_file() && merges.is_file() {
            Self::from_vocab_and_merges_files(&vocab, &merges, context_length)
        } else {
            Self::openai(context_length)
        }
    }

    /// A Hugging Face `tokenizer.json`. Its own truncation, padding and post-processing
    /// settings are ignored: [`encode`](Self::encode) does those, the same way for every
    /// source. The BOS/EOS/pad tokens are read from `tokenizer_config.json` and then
    /// `special_tokens_map.json` beside it (the latter wins, as in `transformers`), defaulting
    /// to `<|startoftext|>` / `<|endoftext|>` / `<|endoftext|>`.
    pub fn from_tokenizer_json(path: &Path, context_length: usize) -> Result<Self> {
        let source_name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| Error::Tokenizer {
            source_name: source_name.clone(),
            msg: format!("not a valid tokenizer.json: {e}"),
        })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer { source_name: source_name.clone(), msg: e.to_string() })?;

        let special = special_tokens_beside(path)?;
        Self::assemble(tokenizer, context_length, special, source_name)
    }

    /// A `vocab.json` (token → id) and `merges.txt` (a `#version` line, then one merge `a b`
    /// a line), as transformers' slow `CLIPTokenizer` reads and saves them, in the pipeline
    /// an HF CLIP `tokenizer.json` describes; special tokens as [`from_tokenizer_json`](Self::from_tokenizer_json).
    pub fn from_vocab_and_merges_files(
        vocab_path: &Path,
        merges_path: &Path,
        context_length: usize,
    ) -> Result<Self> {
        let source_name = format!("{} and {}", vocab_path.display(), merges_path.display());
        let err =
            |path: &Path, msg: String| Error::Tokenizer { source_name: path.display().to_string(), msg };
        let bytes = std::fs::read(vocab_path).map_err(|e| Error::io(vocab_path, e))?;
        let vocab: Vocab = serde_json::from_slice(&bytes)
            .map_err(|e| err(vocab_path, format!("not a token → id map: {e}")))?;
        let text = std::fs::read_to_string(merges_path).map_err(|e| Error::io(merges_path, e))?;
        let merges = text
            .lines()
            .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
            // As many as the slow tokenizer reads (`[1 : 49152 - 256 - 2 + 1]`).
            .take(OPENAI_MERGES)
            .map(|line| parse_merge(line).map_err(|msg| err(merges_path, msg)))
            .collect::<Result<Vec<_>>>()?;
        let special = special_tokens_beside(vocab_path)?;
        let tokenizer = clip_pipeline(vocab, merges, &special)
            .map_err(|msg| Error::Tokenizer { source_name: source_name.clone(), msg })?;
        Self::assemble(tokenizer, context_length, special, source_name)
    }

    /// The OpenAI CLIP vocabulary (49,408 ids), embedded in the crate, in the same pipeline an
    /// HF CLIP `tokenizer.json` describes.
    pub fn openai(context_length: usize) -> Result<Self> {
        let err = |msg: String| Error::Tokenizer { source_name: OPENAI_SOURCE.to_string(), msg };
        let mut text = String::new();
        flate2::read::GzDecoder::new(OPENAI_BPE_GZ)
            .read_to_string(&mut text)
            .map_err(|e| err(format!("cannot decompress the embedded vocabulary: {e}")))?;
        // Line 0 is a version header; the next OPENAI_MERGES lines are the merges CLIP uses.
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(OPENAI_MERGES)
            .map(|line| parse_merge(line).map_err(err))
            .collect::<Result<_>>()?;
        if merges.len() != OPENAI_MERGES {
            return Err(err(format!("expected {OPENAI_MERGES} merges, found {}", merges.len())));
        }

        // Vocabulary order is the one the CLIP weights were trained with.
        let byte_symbols: Vec<String> = bytes_to_unicode().iter().map(|c| c.to_string()).collect();
        let mut tokens: Vec<String> = Vec::with_capacity(OPENAI_VOCAB_SIZE);
        tokens.extend(byte_symbols.iter().cloned());
        tokens.extend(byte_symbols.iter().map(|s| format!("{s}{WORD_SUFFIX}")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push(BOS_TOKEN.to_string());
        tokens.push(EOS_TOKEN.to_string());
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        if vocab.len() != OPENAI_VOCAB_SIZE {
            return Err(err(format!("built {} distinct tokens, expected {OPENAI_VOCAB_SIZE}", vocab.len())));
        }
        let special = SpecialTokens::default();
        let tokenizer = clip_pipeline(vocab, merges, &special).map_err(err)?;
        Self::assemble(tokenizer, context_length, special, OPENAI_SOURCE.to_string())
    }

    fn assemble(
        tokenizer: Tokenizer,
        context_length: usize,
        special: SpecialTokens,
        source_name: String,
    ) -> Result<Self> {
        if context_length < 2 {
            return Err(Error::Tokenizer {
                source_name,
                msg: format!(
                    "context length {context_length} leaves no room for <|startoftext|> and <|endoftext|>"
                ),
            });
        }
        let id_of = |role: &str, token: Option<String>, default: &str| -> Result<u32> {
            let token = token.unwrap_or_else(|| default.to_string());
            tokenizer.token_to_id(&token).ok_or_else(|| Error::Tokenizer {
                source_name: source_name.clone(),
                msg: format!("{role} token {token:?} is not in the vocabulary"),
            })
        };
        let bos_id = id_of("bos", special.bos, BOS_TOKEN)?;
        let eos_id = id_of("eos", special.eos, EOS_TOKEN)?;
        let pad_id = id_of("pad", special.pad, EOS_TOKEN)?;
        Ok(Self { tokenizer, context_length, bos_id, eos_id, pad_id, source_name })
    }

    /// Exactly `context_length` ids: `<|startoftext|>`, the text's tokens (cut to
    /// `context_length - 2`), `<|endoftext|>`, then pad ids — the output of HF
    /// `CLIPTokenizerFast(padding="max_length", truncation=True, max_length=context_length)`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| Error::Tokenizer {
            source_name: self.source_name.clone(),
            msg: format!("cannot tokenize {:?}: {e}", preview(text)),
        })?;
        let body = self.context_length - 2;
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(self.bos_id);
        ids.extend(encoding.get_ids().iter().take(body).copied());
        ids.push(self.eos_id);
        ids.resize(self.context_length, self.pad_id);
        Ok(ids)
    }

    /// [`encode`](Self::encode) for many texts, in parallel; order preserved.
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    /// Text of a sequence of ids, special tokens dropped, `</w>` turned back into spaces (as
    /// HF's `CLIPTokenizer.decode`). Lowercased and normalized, so not always the input text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self.tokenizer.decode(ids, true).map_err(|e| Error::Tokenizer {
            source_name: self.source_name.clone(),
            msg: format!("cannot decode ids: {e}"),
        })?;
        Ok(text.replace(WORD_SUFFIX, " ").trim().to_string())
    }

    /// Length of every sequence [`encode`](Self::encode) returns.
    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`, as transformers
    /// saves a CLIP tokenizer, so the directory loads with `CLIPTokenizer.from_pretrained`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = dir.join("tokenizer.json");
        self.tokenizer.save(&json, false).map_err(|e| Error::Tokenizer {
            source_name: json.display().to_string(),
            msg: format!("writing: {e}"),
        })?;
        let token = |id: u32| self.tokenizer.id_to_token(id).unwrap_or_default();
        let config = serde_json::json!({
            "tokenizer_class": "CLIPTokenizer",
            "bos_token": token(self.bos_id),
            "eos_token": token(self.eos_id),
            "pad_token": token(self.pad_id),
            "unk_token": token(self.eos_id),
            "model_max_length": self.context_length,
        });
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, format!("{config:#}\n")).map_err(|e| Error::io(&path, e))
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Id of `<|endoftext|>`: the text tower pools the features at its (first) position.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of `<|startoftext|>`.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id used to pad sequences after the EOT token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Number of distinct tokens, special tokens included (49,408 for OpenAI CLIP).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Where the vocabulary came from (a `tokenizer.json` path or the built-in one).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }
}

/// Reads `bos_token` / `eos_token` / `pad_token` (a string or `{"content": ...}`) from an HF
/// tokenizer config file, overriding what `special` already holds.
fn read_special_tokens(path: &Path, special: &mut SpecialTokens) -> Result<()> {
    let config_err = |msg: String| Error::Config { path: PathBuf::from(path), msg };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| config_err(e.to_string()))?;
    let Some(map) = json.as_object() else {
        return Err(config_err("expected a JSON object".to_string()));
    };
    let fields =
        [("bos_token", &mut special.bos), ("eos_token", &mut special.eos), ("pad_token", &mut special.pad)];
    for (key, slot) in fields {
        match map.get(key) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) => *slot = Some(s.clone()),
            Some(serde_json::Value::Object(o)) => match o.get("content") {
                Some(serde_json::Value::String(s)) => *slot = Some(s.clone()),
                _ => return Err(config_err(format!("{key} has no string \"content\""))),
            },
            Some(other) => {
                return Err(config_err(format!("{key} should be a string or an object, found {other}")))
            }
        }
    }
    Ok(())
}

/// The special tokens that `tokenizer_config.json` and then `special_tokens_map.json` in
/// the folder of `path` name (the latter wins, as in transformers).
fn special_tokens_beside(path: &Path) -> Result<SpecialTokens> {
    let mut special = SpecialTokens::default();
    if let Some(dir) = path.parent() {
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let cfg = dir.join(name);
            if cfg.is_file() {
                read_special_tokens(&cfg, &mut special)?;
            }
        }
    }
    Ok(special)
}

/// One merge line, `a b`.
fn parse_merge(line: &str) -> std::result::Result<(String, String), String> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("malformed merge line {line:?}")),
    }
}

/// CLIP's tokenization pipeline around a BPE `vocab` and its `merges` (the module doc):
/// word-final symbols carry `</w>`, the end-of-text token stands for unknown symbols, and
/// the start- and end-of-text tokens are special.
fn clip_pipeline(
    vocab: Vocab,
    merges: Vec<(String, String)>,
    special: &SpecialTokens,
) -> std::result::Result<Tokenizer, String> {
    let bos = special.bos.clone().unwrap_or_else(|| BOS_TOKEN.to_string());
    let eos = special.eos.clone().unwrap_or_else(|| EOS_TOKEN.to_string());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(eos.clone())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(WORD_SUFFIX.to_string())
        .fuse_unk(false)
        .build()
        .map_err(|e| format!("cannot build the BPE model: {e}"))?;
    let normalizer = Sequence::new(vec![
        NFC.into(),
        Replace::new(ReplacePattern::Regex(r"\s+".to_string()), " ").map_err(|e| e.to_string())?.into(),
        Lowercase.into(),
    ]);
    let pre_tokenizer = PreSequence::new(vec![
        Split::new(SplitPattern::Regex(CLIP_SPLIT_REGEX.to_string()), SplitDelimiterBehavior::Removed, true)
            .map_err(|e| e.to_string())?
            .into(),
        ByteLevel::new(false, true, false).into(),
    ]);
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(normalizer));
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    // After the normalizer is set: `normalized` special tokens are matched in normalized text,
    // as HF's CLIP tokenizer.json declares them.
    tokenizer.add_special_tokens(&[
        AddedToken::from(bos, true).normalized(true),
        AddedToken::from(eos, true).normalized(true),
    ]);
    Ok(tokenizer)
}

/// GPT-2's reversible byte → printable-character map, in its canonical order: the printable
/// Latin-1 bytes map to themselves, the other 68 bytes to U+0100 onwards in byte order. The
/// order is also the order of the first 256 CLIP vocabulary ids.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from('!')..=u32::from('~')).contains(&b)
            || (u32::from('¡')..=u32::from('¬')).contains(&b)
            || (u32::from('®')..=u32::from('ÿ')).contains(&b)
    };
    let mut out: Vec<char> = (0u32..256).filter(|&b| printable(b)).filter_map(char::from_u32).collect();
    let mut n = 0;
    for b in 0u32..256 {
        if !printable(b) {
            out.extend(char::from_u32(256 + n));
            n += 1;
        }
    }
    out
}

/// The start of a text, for error messages.
fn preview(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_permutation_in_gpt2_order() {
        let m = bytes_to_unicode();
        assert_eq!(m.len(), 256);
        assert_eq!(m[0], '!');
        assert_eq!(m[93], '~');
        assert_eq!(m[94], '¡');
        // byte 0 is the first non-printable one, byte 32 (space) the 33rd.
        assert_eq!(m[188], '\u{100}');
        assert_eq!(m[188 + 32], 'Ġ');
        let set: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
    }
}
