// Tokenizers without the real model: SentencePiece-style BPE (GGUF scores and tokenizer.json
// merges), byte-level round trips, chat formats, streaming decode.
#include <gtest/gtest.h>

#include "glq/error.hpp"
#include "glq/model/gguf.hpp"
#include "glq/model/tokenizer.hpp"
#include "tiny_gguf.hpp"

namespace glq::model {
namespace {

const std::string kS = "\xE2\x96\x81";  // U+2581

// A SentencePiece vocabulary: <unk> <s> </s>, 256 byte tokens, then pieces with scores.
Tokenizer spm_from_gguf(const std::string& chat_template = "") {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  std::vector<float> scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    tokens.push_back(buf);
    types.push_back(6);
    scores.push_back(0);
  }
  const std::vector<std::pair<std::string, float>> pieces = {
      {kS, -1}, {"h", -2}, {"e", -2}, {"l", -2}, {"o", -2}, {"w", -2}, {"r", -2}, {"d", -2},
      {kS + "h", -5}, {"el", -6}, {"ll", -4}, {"llo", -3}, {kS + "he", -7}, {kS + "hello", -1.5f},
      {kS + "w", -5}, {"or", -5}, {"ld", -5}, {kS + "wor", -4}, {kS + "world", -1.5f}, {"[INST]", -1}, {"[/INST]", -1}};
  for (auto& [p, s] : pieces) {
    tokens.push_back(p);
    types.push_back(1);
    scores.push_back(s);
  }
  test::GgufBuilder g;
  g.kv_string("general.architecture", "llama");
  g.kv_string("tokenizer.ggml.model", "llama");
  g.kv_strings("tokenizer.ggml.tokens", tokens);
  g.kv_f32s("tokenizer.ggml.scores", scores);
  g.kv_i32s("tokenizer.ggml.token_type", types);
  g.kv_u32("tokenizer.ggml.bos_token_id", 1);
  g.kv_u32("tokenizer.ggml.eos_token_id", 2);
  g.kv_u32("tokenizer.ggml.unknown_token_id", 0);
  if (!chat_template.empty()) g.kv_string("tokenizer.chat_template", chat_template);
  test::TempDir d;
  test::write_bytes(d.file("spm.gguf"), g.build());
  return Tokenizer::from_gguf(GgufFile(d.file("spm.gguf")));
}

std::vector<std::string> pieces_of(const Tokenizer& t, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(t.token_string(id));
  return out;
}

TEST(Tokenizer, SentencePieceScoresAndByteFallback) {
  const Tokenizer t = spm_from_gguf();
  EXPECT_EQ(t.kind(), TokenizerKind::SentencePieceBpe);
  EXPECT_TRUE(t.add_bos_default());
  const auto ids = t.encode("hello world", true, true);
  EXPECT_EQ(pieces_of(t, ids), (std::vector<std::string>{"<s>", kS + "hello", kS + "world"}));
  EXPECT_EQ(t.decode(ids, true), "hello world");
  // é is no piece: its two UTF-8 bytes become byte tokens.
  const auto e = t.encode("hé", false, true);
  EXPECT_EQ(pieces_of(t, e), (std::vector<std::string>{kS + "h", "<0xC3>", "<0xA9>"}));
  EXPECT_EQ(t.decode(e), "hé");
  EXPECT_EQ(pieces_of(t, t.encode("</s>", false, true)), (std::vector<std::string>{"</s>"}));
}

TEST(Tokenizer, SentencePieceFromTokenizerJson) {
  // Llama 2 style tokenizer.json: Prepend + Replace normalizer, merges, byte fallback.
  test::TempDir d;
  std::string vocab = "\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2";
  for (int b = 0; b < 256; ++b) {
    char buf[32];
    std::snprintf(buf, sizeof buf, ", \"<0x%02X>\": %d", b, 3 + b);
    vocab += buf;
  }
  const std::vector<std::string> extra = {kS, "a", "b", "c", kS + "a", "bc", kS + "abc"};
  for (size_t i = 0; i < extra.size(); ++i) vocab += ", \"" + extra[i] + "\": " + std::to_string(259 + i);
  std::ofstream(d.file("tokenizer.json")) << R"({"added_tokens": [{"id": 1, "content": "<s>", "special": true}, {"id": 2, "content": "</s>", "special": true}],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": ")" << kS << R"("}, {"type": "Replace", "pattern": {"String": " "}, "content": ")" << kS << R"("}]},
    "pre_tokenizer": null,
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]},
    "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>", "vocab": {)" << vocab << R"(},
              "merges": [")" << kS << R"( a", "b c", ")" << kS << R"(a bc"]}})";
  std::ofstream(d.file("tokenizer_config.json")) << R"({"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{{ bos_token }}[INST] x [/INST]"})";
  const Tokenizer t = Tokenizer::from_hf_files(d.file("tokenizer.json"), d.file("tokenizer_config.json"));
  EXPECT_EQ(t.kind(), TokenizerKind::SentencePieceBpe);
  EXPECT_TRUE(t.add_bos_default());
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.chat_format(), ChatFormat::Mistral);
  const auto ids = t.encode("abc abc!", true, true);
  EXPECT_EQ(pieces_of(t, ids), (std::vector<std::string>{"<s>", kS + "abc", kS + "abc", "<0x21>"}));
  EXPECT_EQ(t.decode(ids, true), "abc abc!");
}

TEST(Tokenizer, ByteLevelRoundTripsArbitraryText) {
  const ModelConfig c = test::tiny_config();
  test::TempDir d;
  test::write_bytes(d.file("t.gguf"), test::tiny_gguf(c, test::random_weights(c, 41)));
  const Tokenizer t = Tokenizer::from_gguf(GgufFile(d.file("t.gguf")));
  std::mt19937 rng(111);
  const std::vector<std::string> atoms = {"a", "Z", " ", "  ", "\n", "\t", "1", "9", "é", "中", "😀", "'s", "<|im_end|>", "\xF0\x9F", "\xFF"};
  for (int i = 0; i < 200; ++i) {
    std::string s;
    const int n = static_cast<int>(rng() % 19);
    for (int k = 0; k < n; ++k) s += atoms[rng() % atoms.size()];
    const auto ids = t.encode(s, false, true);
    // Invalid UTF-8 bytes are read as U+FFFD, the rest comes back byte for byte.
    std::string want;
    for (size_t p = 0; p < s.size();) {
      size_t len = 0;
      const auto ch = static_cast<unsigned char>(s[p]);
      if (ch < 0x80) len = 1;
      else if (s.compare(p, 2, "é") == 0) len = 2;
      else if (s.compare(p, 3, "中") == 0) len = 3;
      else if (s.compare(p, 4, "😀") == 0) len = 4;
      if (len) {
        want += s.substr(p, len);
        p += len;
      } else {
        want += "\xEF\xBF\xBD";
        ++p;
      }
    }
    EXPECT_EQ(t.decode(ids), want) << i;
    // Streaming gives the same text, never splitting a character.
    TokenStreamer st(t, false);
    std::string streamed;
    for (int32_t id : ids) streamed += st.push(id);
    streamed += st.flush();
    EXPECT_EQ(streamed, want) << i;
  }
  EXPECT_THROW(t.token_bytes(t.vocab_size()), Error);
}

Tokenizer with_template(const std::string& tmpl, const std::vector<std::string>& specials) {
  test::GgufBuilder g;
  std::vector<std::string> tokens = specials;
  for (int b = 0; b < 256; ++b) {
    std::string s;
    append_utf8(s, byte_to_code_point()[static_cast<size_t>(b)]);
    tokens.push_back(s);
  }
  std::vector<int32_t> types(tokens.size(), 1);
  for (size_t i = 0; i < specials.size(); ++i) types[i] = 3;
  g.kv_string("tokenizer.ggml.model", "gpt2");
  g.kv_strings("tokenizer.ggml.tokens", tokens);
  g.kv_i32s("tokenizer.ggml.token_type", types);
  g.kv_strings("tokenizer.ggml.merges", {});
  g.kv_u32("tokenizer.ggml.bos_token_id", 0);
  g.kv_u32("tokenizer.ggml.eos_token_id", 1);
  g.kv_string("tokenizer.chat_template", tmpl);
  test::TempDir d;
  test::write_bytes(d.file("c.gguf"), g.build());
  return Tokenizer::from_gguf(GgufFile(d.file("c.gguf")));
}

TEST(Tokenizer, ChatFormats) {
  const std::vector<ChatMessage> conv = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Again"}};
  const Tokenizer l3 = with_template("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}",
                                     {"<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"});
  EXPECT_EQ(l3.chat_format(), ChatFormat::Llama3);
  EXPECT_EQ(l3.apply_chat_template(conv),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAgain<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_TRUE(l3.is_stop(l3.token_id("<|eot_id|>")));
  const Tokenizer l2 = with_template("{{ bos_token + '[INST] ' + '<<SYS>>\\n' }}", {"<s>", "</s>"});
  EXPECT_EQ(l2.chat_format(), ChatFormat::Llama2);
  EXPECT_EQ(l2.apply_chat_template(conv),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Again [/INST]");
  const Tokenizer mi = with_template("{{ bos_token }}{{ '[INST] ' + message['content'] + ' [/INST]' }}", {"<s>", "</s>"});
  EXPECT_EQ(mi.chat_format(), ChatFormat::Mistral);
  EXPECT_EQ(mi.apply_chat_template(conv), "<s>[INST] Be brief.\n\nHi [/INST]Hello</s>[INST] Again [/INST]");
  const Tokenizer cm = with_template("{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}",
                                     {"<|im_start|>", "<|im_end|>"});
  EXPECT_EQ(cm.chat_format(), ChatFormat::ChatML);
  const std::vector<ChatMessage> one = {{"user", "Hi"}};
  EXPECT_EQ(cm.apply_chat_template(one), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const std::vector<ChatMessage> bad = {{"tool", "x"}};
  EXPECT_THROW(cm.apply_chat_template(bad), Error);
  EXPECT_EQ(detect_chat_format(""), ChatFormat::None);
}

}  // namespace
}  // namespace glq::model

namespace glq::model {
namespace {

// The GGUF pre-tokenizer choice shows in how a digit run is split before BPE.
TEST(Tokenizer, GgufPreTokenizerDigitSplits) {
  auto make = [](const std::string& pre) {
    test::GgufBuilder g;
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b) {
      std::string s;
      append_utf8(s, byte_to_code_point()[static_cast<size_t>(b)]);
      tokens.push_back(s);
    }
    const std::vector<std::string> merges = {"1 2", "3 4", "12 3", "4 5"};
    for (const auto& m : merges) {
      std::string t = m;
      t.erase(t.find(' '), 1);
      tokens.push_back(t);
    }
    g.kv_string("tokenizer.ggml.model", "gpt2");
    g.kv_string("tokenizer.ggml.pre", pre);
    g.kv_strings("tokenizer.ggml.tokens", tokens);
    g.kv_strings("tokenizer.ggml.merges", merges);
    test::TempDir d;
    test::write_bytes(d.file("p.gguf"), g.build());
    return Tokenizer::from_gguf(GgufFile(d.file("p.gguf")));
  };
  auto split = [](const Tokenizer& t, const std::string& s) {
    std::vector<std::string> out;
    for (int32_t id : t.encode(s, false, true)) out.push_back(t.token_string(id));
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(split(make("default"), "12345"), (V{"12", "34", "5"}));    // one piece
  EXPECT_EQ(split(make("llama-bpe"), "12345"), (V{"123", "45"}));      // \p{N}{1,3}
  EXPECT_EQ(split(make("qwen2"), "12345"), (V{"1", "2", "3", "4", "5"}));
  EXPECT_EQ(split(make("smollm"), "12345"), (V{"1", "2", "3", "4", "5"}));
  EXPECT_THROW(make("no-such-pre"), Error);
}

}  // namespace
}  // namespace glq::model
