// tokenizer.json written from a GGUF file's metadata encodes exactly as the GGUF tokenizer does,
// and hf_config_json() gives back the same model config (real SmolLM2 file; skipped without it).
#include <gtest/gtest.h>

#include "glq/model/gguf.hpp"
#include "glq/model/glq_checkpoint.hpp"
#include "glq/model/tokenizer.hpp"
#include "quant/quant_test_util.hpp"

namespace glq::model {
namespace {

TEST(TokenizerExport, GgufToTokenizerJsonEncodesAlike) {
  const std::string path = test::smollm2_gguf();
  GLQ_REQUIRE_FILE(path);
  const GgufFile gguf(path);
  quant_test::TempDir d;
  write_hf_tokenizer_from_gguf(gguf, d.path.string());
  const Tokenizer a = Tokenizer::from_gguf(gguf);
  const Tokenizer b = load_tokenizer(d.path.string());
  EXPECT_EQ(a.vocab_size(), b.vocab_size());
  EXPECT_EQ(a.bos_id(), b.bos_id());
  EXPECT_EQ(a.eos_id(), b.eos_id());
  EXPECT_EQ(a.add_bos_default(), b.add_bos_default());
  EXPECT_EQ(a.chat_format(), b.chat_format());
  EXPECT_EQ(a.stop_ids(), b.stop_ids());
  const std::vector<std::string> texts = {
      "Hello, world! The year 2026 had 365 days and 1,234,567 tokens.",
      "  leading spaces\n\n\ttabs and\r\nnewlines  ",
      "Ünïcödé — naïve café, 日本語のテキスト, emoji 🙂🚀",
      "<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n",
      "don't you'll we've I'M shouldn't",
      std::string("bytes \xff\xfe invalid"),
  };
  for (const auto& t : texts) {
    EXPECT_EQ(a.encode(t, false, true), b.encode(t, false, true)) << t;
    EXPECT_EQ(a.encode(t, true, false), b.encode(t, true, false)) << t;
  }
  const std::vector<ChatMessage> chat = {{"system", "Be brief."}, {"user", "Hi"}};
  EXPECT_EQ(a.apply_chat_template(chat), b.apply_chat_template(chat));

  const ModelConfig c = gguf_model_config(gguf);
  const ModelConfig back = parse_hf_config(hf_config_json(c).dump(), "written config.json");
  EXPECT_EQ(back.num_layers, c.num_layers);
  EXPECT_EQ(back.hidden_size, c.hidden_size);
  EXPECT_EQ(back.num_kv_heads, c.num_kv_heads);
  EXPECT_EQ(back.head_dim, c.head_dim);
  EXPECT_EQ(back.rope_theta, c.rope_theta);
  EXPECT_EQ(back.norm_eps, c.norm_eps);
  EXPECT_EQ(back.tie_embeddings, c.tie_embeddings);
  EXPECT_EQ(back.vocab_size, c.vocab_size);
  EXPECT_EQ(back.max_context, c.max_context);
}

}  // namespace
}  // namespace glq::model
