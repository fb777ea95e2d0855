// Tokenizers of the Llama family, read from tokenizer.json (+ tokenizer_config.json) or from
// GGUF metadata:
//   ByteLevelBpe      GPT-2 style: regex pre-tokenization, bytes mapped to printable code
//                     points, BPE by merge rank (Llama 3, Qwen2, SmolLM).
//   SentencePieceBpe  Llama 2 / Mistral: spaces become U+2581, BPE by merge rank or piece score,
//                     unknown characters fall back to <0xNN> byte tokens.
// Special tokens (added tokens) are matched in the text before pre-tokenization.
// Chat templates: the template text is recognised as one of the common formats (ChatFormat);
// apply_chat_template() renders messages in that format (no general Jinja engine).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace glq::model {

class GgufFile;

enum class TokenizerKind { ByteLevelBpe, SentencePieceBpe };

enum class ChatFormat {
  None,     // no template: messages are joined as "role: content" lines
  ChatML,   // <|im_start|>role\ncontent<|im_end|>\n   (SmolLM2, Qwen2)
  Llama2,   // <s>[INST] <<SYS>>\n...\n<</SYS>>\n\nuser [/INST] answer </s>
  Llama3,   // <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
  Mistral,  // <s>[INST] user [/INST] answer</s>
};
const char* chat_format_name(ChatFormat format);
// Recognises a Jinja chat template by its markers; None when empty or unknown.
ChatFormat detect_chat_format(std::string_view template_text);

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

class Tokenizer {
 public:
  // tokenizer.json, and optionally tokenizer_config.json (chat template, bos/eos, add_bos);
  // pass "" when absent.
  static Tokenizer from_hf_files(const std::string& tokenizer_json_path,
                                 const std::string& tokenizer_config_path);
  static Tokenizer from_gguf(const GgufFile& gguf);

  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  Tokenizer(const Tokenizer&);
  Tokenizer& operator=(const Tokenizer&);

  TokenizerKind kind() const;
  int vocab_size() const;

  // Token ids of `text` (invalid UTF-8 bytes are read as U+FFFD). add_bos prepends bos_id()
  // when the tokenizer has one (callers usually pass add_bos_default()). With parse_special,
  // special-token strings in the text become their ids; otherwise they are tokenized as
  // ordinary text (added tokens that are not special are always matched).
  std::vector<int32_t> encode(std::string_view text, bool add_bos = false,
                              bool parse_special = true) const;
  // Concatenated bytes of the tokens (SentencePiece: U+2581 → space, leading space of the first
  // piece kept as the `tokenizers` library does). skip_special drops special tokens.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
  // Bytes of one token (may be an incomplete UTF-8 sequence). Throws for an id out of range.
  std::string token_bytes(int32_t id) const;
  // The vocabulary string of a token ("Ġthe"), -1 from token_id when absent.
  const std::string& token_string(int32_t id) const;
  int32_t token_id(std::string_view token) const;
  bool is_special(int32_t id) const;

  int32_t bos_id() const;  // -1 when none
  int32_t eos_id() const;
  bool add_bos_default() const;
  // Tokens that end a generation: eos plus end-of-turn tokens (<|im_end|>, <|eot_id|>, ...).
  const std::vector<int32_t>& stop_ids() const;
  bool is_stop(int32_t id) const;

  const std::string& chat_template() const;
  ChatFormat chat_format() const;
  // Renders the conversation; with add_generation_prompt the text ends where the assistant's
  // reply starts. Throws InvalidArgument for an unknown role.
  std::string apply_chat_template(std::span<const ChatMessage> messages,
                                  bool add_generation_prompt = true) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of token ids into text, holding back bytes of an incomplete UTF-8 character
// until it is complete (for streaming output).
class TokenStreamer {
 public:
  explicit TokenStreamer(const Tokenizer& tokenizer, bool skip_special = true)
      : tokenizer_(&tokenizer), skip_special_(skip_special) {}
  // Text that became complete with this token (possibly empty).
  std::string push(int32_t id);
  // Whatever is held back (invalid UTF-8 is passed through as is).
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace glq::model
