//! The CLIP tokenizer against Hugging Face's `CLIPTokenizerFast` (reference ids generated in
//! Python into `tests/fixtures`), plus truncation, context length and error behaviour.

use candle_core::{DType, Device};
use wise_clip::tokenizer::ClipTokenizer;

mod support;
use support::fixture;

/// The first position where two id sequences differ, for readable failures.
fn first_diff(a: &[u32], b: &[u32]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
}

#[test]
fn openai_vocab_matches_hf_clip_tokenizer_fast() {
    let path = fixture("tokenizer/cases.json");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("cases.json")).expect("valid JSON");
    let context_length = json["context_length"].as_u64().expect("context_length") as usize;
    let texts = json["texts"].as_array().expect("texts");
    let expected = json["input_ids"].as_array().expect("input_ids");
    assert_eq!(texts.len(), expected.len());
    assert!(!texts.is_empty());

    let tok = ClipTokenizer::openai(context_length).unwrap();
    assert_eq!(tok.vocab_size(), 49408);
    assert_eq!(tok.eos_id(), 49407);
    assert_eq!(tok.bos_id(), 49406);

    let mut failures = Vec::new();
    for (text, want) in texts.iter().zip(expected) {
        let text = text.as_str().expect("text is a string");
        let want: Vec<u32> =
            want.as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
        let got = tok.encode(text).unwrap();
        assert_eq!(got.len(), context_length);
        if let Some(i) = first_diff(&got, &want) {
            failures.push(format!("{text:?}: first difference at {i}\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // encode_batch is encode, in order.
    let owned: Vec<String> = texts.iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let batch = tok.encode_batch(&owned).unwrap();
    for (t, ids) in owned.iter().zip(&batch) {
        assert_eq!(ids, &tok.encode(t).unwrap());
    }
}

/// The fixture model's texts through the tokenizer of `dir` against the ids HF's
/// `CLIPTokenizerFast` gave (`expected.safetensors`); returns the tokenizer's source name.
fn check_fixture_ids(dir: &std::path::Path) -> String {
    let expected = fixture("clip-tiny-quickgelu/expected.safetensors");
    let tensors = candle_core::safetensors::load(&expected, &Device::Cpu).expect("expected.safetensors");
    let ids = tensors.get("input_ids").expect("input_ids in expected.safetensors");
    let (n, context_length) = ids.dims2().unwrap();
    let want: Vec<Vec<i64>> = ids.to_dtype(DType::I64).unwrap().to_vec2().unwrap();

    let texts: Vec<String> =
        std::fs::read_to_string(fixture("texts.txt")).unwrap().lines().map(str::to_string).collect();
    assert_eq!(texts.len(), n);

    let tok = ClipTokenizer::for_model_dir(dir, context_length).unwrap();
    assert_eq!(tok.vocab_size(), 1014);
    let got = tok.encode_batch(&texts).unwrap();
    for ((text, got), want) in texts.iter().zip(&got).zip(&want) {
        let want: Vec<u32> = want.iter().map(|&v| v as u32).collect();
        assert_eq!(got, &want, "{text:?}");
    }
    tok.source_name().to_string()
}

#[test]
fn tokenizer_json_in_model_dir_matches_hf() {
    let source = check_fixture_ids(&fixture("clip-tiny-quickgelu"));
    assert!(source.ends_with("tokenizer.json"), "{source}");
}

/// A folder saved by transformers' slow `CLIPTokenizer` has `vocab.json` and `merges.txt`
/// but no `tokenizer.json`: its own vocabulary, not OpenAI's, gives HF's ids.
#[test]
fn vocab_and_merges_in_model_dir_match_hf() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(fixture("clip-tiny-quickgelu").join(name), dir.path().join(name)).unwrap();
    }
    let source = check_fixture_ids(dir.path());
    assert!(source.contains("vocab.json and") && source.ends_with("merges.txt"), "{source}");

    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\ni n\nthree parts here\n").unwrap();
    let err = ClipTokenizer::for_model_dir(dir.path(), 77).unwrap_err().to_string();
    assert!(err.contains("merges.txt") && err.contains("malformed merge line \"three parts here\""), "{err}");
    // A merge whose parts are not in the vocabulary: both files named.
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\nqq ww\n").unwrap();
    let err = ClipTokenizer::for_model_dir(dir.path(), 77).unwrap_err().to_string();
    assert!(err.contains("vocab.json and") && err.contains("merges.txt") && err.contains("`qq`"), "{err}");
    std::fs::write(dir.path().join("vocab.json"), "[1, 2]").unwrap();
    let err = ClipTokenizer::for_model_dir(dir.path(), 77).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains("not a token → id map"), "{err}");
}

#[test]
fn model_dir_without_tokenizer_json_uses_openai_vocab() {
    let dir = tempfile::tempdir().unwrap();
    let tok = ClipTokenizer::for_model_dir(dir.path(), 77).unwrap();
    assert_eq!(tok.vocab_size(), 49408);
    assert_eq!(tok.encode("a photo of a dog.").unwrap()[..8], [49406, 320, 1125, 539, 320, 1929, 269, 49407]);
}

#[test]
fn truncation_keeps_eot_last() {
    let tok = ClipTokenizer::openai(77).unwrap();
    let long = "a photo of a very large dog ".repeat(50);
    let ids = tok.encode(&long).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], tok.bos_id());
    assert_eq!(ids[76], tok.eos_id());
    assert!(!ids[1..76].contains(&tok.eos_id()));
    // The kept tokens are the start of the text.
    let short = tok.encode("a photo of a very large dog").unwrap();
    let n = short.iter().position(|&i| i == tok.eos_id()).unwrap();
    assert_eq!(ids[..n], short[..n]);
}

#[test]
fn other_context_lengths() {
    for context_length in [2, 5, 16, 128] {
        let tok = ClipTokenizer::openai(context_length).unwrap();
        assert_eq!(tok.context_length(), context_length);
        let ids = tok.encode("a photo of a dog.").unwrap();
        assert_eq!(ids.len(), context_length);
        assert_eq!(ids[0], 49406);
        let full = [49406, 320, 1125, 539, 320, 1929, 269, 49407];
        if context_length >= full.len() {
            assert_eq!(ids[..full.len()], full);
            assert!(ids[full.len()..].iter().all(|&i| i == tok.pad_id()));
        } else {
            assert_eq!(ids[..context_length - 1], full[..context_length - 1]);
            assert_eq!(ids[context_length - 1], 49407);
        }
    }
    assert!(ClipTokenizer::openai(1).is_err());
    assert!(ClipTokenizer::openai(0).is_err());
}

#[test]
fn decode_round_trips_plain_text() {
    let tok = ClipTokenizer::openai(77).unwrap();
    let ids = tok.encode("A photo of a café, 2 dogs!").unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), "a photo of a café , 2 dogs !");
}

#[test]
fn missing_tokenizer_json_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let err = ClipTokenizer::from_tokenizer_json(&path, 77).unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[test]
fn corrupt_tokenizer_json_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, b"{\"model\": {\"type\": \"BPE\", \"vocab\": 3").unwrap();
    let err = ClipTokenizer::from_tokenizer_json(&path, 77).unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    // The same through the model-directory entry point.
    let err = ClipTokenizer::for_model_dir(dir.path(), 77).unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[test]
fn pad_token_comes_from_the_tokenizer_config() {
    // A tiny HF-style tokenizer.json built by hand, with open_clip-style "!" padding.
    let dir = tempfile::tempdir().unwrap();
    let tokenizer_json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 7, "content": "<|startoftext|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": true, "special": true},
            {"id": 8, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": true, "special": true}
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
            "fuse_unk": false, "byte_fallback": false,
            "vocab": {"!": 0, "a": 1, "b": 2, "a</w>": 3, "b</w>": 4, "ab</w>": 5, "!</w>": 6,
                      "<|startoftext|>": 7, "<|endoftext|>": 8},
            "merges": ["a b</w>"]
        }
    });
    std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_vec(&tokenizer_json).unwrap()).unwrap();
    let tok = ClipTokenizer::for_model_dir(dir.path(), 6).unwrap();
    assert_eq!(tok.encode("AB a").unwrap(), [7, 5, 3, 8, 8, 8]);

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        br#"{"pad_token": {"content": "!", "__type": "AddedToken"}, "eos_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    let tok = ClipTokenizer::for_model_dir(dir.path(), 6).unwrap();
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(tok.encode("AB a").unwrap(), [7, 5, 3, 8, 0, 0]);

    // special_tokens_map.json wins over tokenizer_config.json, as in transformers.
    std::fs::write(dir.path().join("special_tokens_map.json"), br#"{"pad_token": "<|endoftext|>"}"#).unwrap();
    let tok = ClipTokenizer::for_model_dir(dir.path(), 6).unwrap();
    assert_eq!(tok.pad_id(), 8);

    // A pad token that is not in the vocabulary is an error naming the tokenizer file.
    std::fs::write(dir.path().join("special_tokens_map.json"), br#"{"pad_token": "<pad>"}"#).unwrap();
    let err = ClipTokenizer::for_model_dir(dir.path(), 6).unwrap_err();
    assert!(err.to_string().contains("<pad>"), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    // A corrupt config names the config file.
    std::fs::write(dir.path().join("special_tokens_map.json"), b"{not json").unwrap();
    let err = ClipTokenizer::for_model_dir(dir.path(), 6).unwrap_err();
    assert!(err.to_string().contains("special_tokens_map.json"), "{err}");
}
