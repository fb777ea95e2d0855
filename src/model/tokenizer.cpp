// Byte-level BPE and SentencePiece-style BPE tokenizers (see glq/model/tokenizer.hpp).
//
// Pipeline of encode(): added/special tokens are cut out of the text first (leftmost, longest
// match); every remaining segment goes through the normalizer (SentencePiece: spaces → U+2581
// and a prepended U+2581), the pre-tokenizer steps (regex splits, digit splits, byte-level
// mapping) and BPE. BPE merges the adjacent pair of lowest merge rank until none applies
// (tokenizer.json / GGUF "gpt2"), or, for GGUF "llama" vocabularies, the adjacent pair whose
// concatenation is a token of highest score (llama.cpp's SentencePiece rule). Symbols missing
// from the vocabulary fall back to <0xNN> byte tokens when the vocabulary has them.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "glq/model/tokenizer.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/model/gguf.hpp"
#include "model/unicode.hpp"

namespace glq::model {

namespace {

// Pre-tokenization regexes (the `tokenizers` library's ByteLevel default, and llama.cpp's
// per-vocabulary patterns for GGUF files, keyed by tokenizer.ggml.pre).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

struct Regex {
  std::shared_ptr<pcre2_code> code;
  std::string pattern;

  Regex() = default;
  Regex(const std::string& pat, bool literal) : pattern(pat) {
    int err = 0;
    PCRE2_SIZE off = 0;
    uint32_t flags = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0u);
    pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat.data()), pat.size(), flags, &err, &off, nullptr);
    if (!c) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof buf);
      throw Error(ErrorKind::Unsupported, fmt::format("tokenizer regex '{}' does not compile at {}: {}", pat, off,
                                                      reinterpret_cast<const char*>(buf)));
    }
    pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is absent
    code.reset(c, pcre2_code_free);
  }

  // [begin, end) of every non-empty match in s (valid UTF-8).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const {
    std::vector<std::pair<size_t, size_t>> out;
    thread_local std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> md(
        pcre2_match_data_create(4, nullptr), pcre2_match_data_free);
    size_t start = 0;
    while (start <= s.size()) {
      const int rc = pcre2_match(code.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start,
                                 PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) throw Error(ErrorKind::Internal, fmt::format("tokenizer regex match failed ({})", rc));
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      if (ov[1] > ov[0]) {
        out.emplace_back(ov[0], ov[1]);
        start = ov[1];
      } else {  // empty match: step one character
        if (ov[0] >= s.size()) break;
        size_t n = utf8_valid_len(s, ov[0]);
        start = ov[0] + (n ? n : 1);
      }
    }
    return out;
  }
};

struct PreStep {
  enum class Kind { Split, Digits, ByteLevel } kind = Kind::Split;
  Regex regex;                 // Split, ByteLevel with use_regex
  bool removed = false;        // Split behaviour "Removed" (else "Isolated")
  bool invert = false;
  bool individual_digits = false;
  bool add_prefix_space = false;
  bool use_regex = true;
};

// Splits each piece at the matches of `re`, keeping matches and gaps as pieces (Isolated), or
// dropping the matches (Removed), or with invert the roles of matches and gaps swapped.
std::vector<std::string> split_pieces(const std::vector<std::string>& pieces, const PreStep& st) {
  std::vector<std::string> out;
  for (const std::string& p : pieces) {
    size_t last = 0;
    for (auto [b, e] : st.regex.find_all(p)) {
      if (b > last && !(st.removed && st.invert)) out.push_back(p.substr(last, b - last));
      if (!(st.removed && !st.invert)) out.push_back(p.substr(b, e - b));
      last = e;
    }
    if (last < p.size() && !(st.removed && st.invert)) out.push_back(p.substr(last));
  }
  return out;
}

// Unicode numeric characters (Rust's char::is_numeric: categories Nd, Nl, No), via PCRE2.
bool is_numeric_char(std::string_view ch) {
  static const Regex re(R"(^\p{N}$)", false);
  return !re.find_all(ch).empty();
}

std::vector<std::string> split_digits(const std::vector<std::string>& pieces, bool individual) {
  std::vector<std::string> out;
  for (const std::string& p : pieces) {
    std::string cur;
    bool cur_digit = false;
    for (const std::string& ch : utf8_chars(p)) {
      const bool d = (ch.size() == 1 && ch[0] >= '0' && ch[0] <= '9') || (ch.size() > 1 && is_numeric_char(ch));
      if (!cur.empty() && (d != cur_digit || (d && individual))) {
        out.push_back(std::move(cur));
        cur.clear();
      }
      cur += ch;
      cur_digit = d;
    }
    if (!cur.empty()) out.push_back(std::move(cur));
  }
  return out;
}

std::string byte_level_map(std::string_view s) {
  const auto& table = byte_to_code_point();
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char c : s) append_utf8(out, table[c]);
  return out;
}

std::string read_file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_io(path, "cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string token_content(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

}  // namespace

struct Tokenizer::Impl {
  TokenizerKind kind = TokenizerKind::ByteLevelBpe;
  std::vector<std::string> tokens;  // id → vocabulary string
  std::unordered_map<std::string, int32_t> ids;
  std::vector<float> scores;        // SentencePiece scores (score-based merging) or empty
  std::unordered_map<std::string, int> merge_rank;  // "a\x01b" → rank
  bool ignore_merges = false;
  bool byte_fallback = false;
  std::vector<uint8_t> special;     // per id: 1 = special (control) token
  struct Added {
    std::string content;
    int32_t id;
    bool special;
  };
  std::vector<Added> added;         // matched in the raw text
  std::vector<PreStep> pre;         // byte-level pre-tokenizer steps
  // SentencePiece normalisation.
  bool spm_prepend_space = true;    // "▁" before each segment
  bool spm_split_on_space = false;  // Metaspace split=true: pieces start at each ▁
  std::string unk_token;
  int32_t unk = -1, bos = -1, eos = -1;
  bool add_bos = false;
  std::vector<int32_t> stop;
  std::string chat_template;
  ChatFormat chat_format = ChatFormat::None;
  std::string default_system;       // ChatML templates that insert a system message
  std::array<int32_t, 256> byte_tokens;  // <0xNN> ids or -1

  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> words;
  };
  std::shared_ptr<Cache> cache = std::make_shared<Cache>();

  void index() {
    ids.clear();
    ids.reserve(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) ids.emplace(tokens[i], static_cast<int32_t>(i));
  }

  void finish() {
    index();
    special.resize(tokens.size(), 0);
    for (const auto& a : added)
      if (a.special && a.id >= 0 && a.id < static_cast<int32_t>(tokens.size())) special[a.id] = 1;
    std::sort(added.begin(), added.end(), [](const Added& a, const Added& b) { return a.content.size() > b.content.size(); });
    byte_tokens.fill(-1);
    for (int b = 0; b < 256; ++b) {
      auto it = ids.find(fmt::format("<0x{:02X}>", b));
      if (it != ids.end()) byte_tokens[b] = it->second;
    }
    if (!unk_token.empty() && unk < 0) {
      auto it = ids.find(unk_token);
      if (it != ids.end()) unk = it->second;
    }
    stop.clear();
    if (eos >= 0) stop.push_back(eos);
    for (const char* s : {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<|end|>", "<end_of_turn>", "<|eom_id|>"}) {
      auto it = ids.find(s);
      if (it != ids.end() && std::find(stop.begin(), stop.end(), it->second) == stop.end()) stop.push_back(it->second);
    }
    chat_format = detect_chat_format(chat_template);
    default_system.clear();
    if (chat_format == ChatFormat::ChatML) {
      // A template that inserts a default system message spells it as a string literal.
      static const std::regex sys(R"(<\|im_start\|>system(?:\n|\\n)([^'"]*?)<\|im_end\|>)");
      std::smatch m;
      if (std::regex_search(chat_template, m, sys)) {
        // Unescape "\n" written inside the template's string literal.
        const std::string raw = m[1].str();
        default_system.clear();
        for (size_t i = 0; i < raw.size(); ++i) {
          if (raw[i] == '\\' && i + 1 < raw.size() && raw[i + 1] == 'n') {
            default_system.push_back('\n');
            ++i;
          } else {
            default_system.push_back(raw[i]);
          }
        }
      }
    }
  }

  int32_t lookup(const std::string& s) const {
    auto it = ids.find(s);
    return it == ids.end() ? -1 : it->second;
  }

  void emit_symbol(const std::string& sym, std::vector<int32_t>& out) const {
    const int32_t id = lookup(sym);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
    if (byte_fallback || kind == TokenizerKind::SentencePieceBpe) {
      bool all = true;
      for (unsigned char c : sym) all = all && byte_tokens[c] >= 0;
      if (all) {
        for (unsigned char c : sym) out.push_back(byte_tokens[c]);
        return;
      }
    }
    if (unk >= 0) {
      if (out.empty() || out.back() != unk || kind != TokenizerKind::SentencePieceBpe) out.push_back(unk);
      return;
    }
    throw Error(ErrorKind::InvalidArgument, fmt::format("tokenizer: '{}' has no token and no fallback", sym));
  }

  // BPE of one pre-token (already byte-mapped for byte-level tokenizers).
  void bpe_word(const std::string& word, std::vector<int32_t>& out) const {
    if (ignore_merges) {
      const int32_t id = lookup(word);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    std::vector<std::string> sym = utf8_chars(word);
    if (!scores.empty() && merge_rank.empty()) {
      // Score rule: merge the adjacent pair whose concatenation is the best-scoring token.
      while (sym.size() > 1) {
        float best = -1e30f;
        size_t at = SIZE_MAX;
        for (size_t i = 0; i + 1 < sym.size(); ++i) {
          const int32_t id = lookup(sym[i] + sym[i + 1]);
          if (id >= 0 && scores[id] > best) {
            best = scores[id];
            at = i;
          }
        }
        if (at == SIZE_MAX) break;
        sym[at] += sym[at + 1];
        sym.erase(sym.begin() + static_cast<ptrdiff_t>(at) + 1);
      }
    } else {
      std::string key;
      while (sym.size() > 1) {
        int best = INT32_MAX;
        size_t at = SIZE_MAX;
        for (size_t i = 0; i + 1 < sym.size(); ++i) {
          key.assign(sym[i]).append("\x01").append(sym[i + 1]);
          auto it = merge_rank.find(key);
          if (it != merge_rank.end() && it->second < best) {
            best = it->second;
            at = i;
          }
        }
        if (at == SIZE_MAX) break;
        // Merge every occurrence of this pair, left to right.
        const std::string a = sym[at], b = sym[at + 1];
        std::vector<std::string> next;
        next.reserve(sym.size());
        for (size_t i = 0; i < sym.size();) {
          if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) {
            next.push_back(a + b);
            i += 2;
          } else {
            next.push_back(std::move(sym[i]));
            ++i;
          }
        }
        sym = std::move(next);
      }
    }
    for (const auto& s : sym) emit_symbol(s, out);
  }

  void bpe_cached(const std::string& word, std::vector<int32_t>& out) const {
    {
      std::lock_guard<std::mutex> lock(cache->mutex);
      auto it = cache->words.find(word);
      if (it != cache->words.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids_;
    bpe_word(word, ids_);
    out.insert(out.end(), ids_.begin(), ids_.end());
    if (word.size() < 256) {
      std::lock_guard<std::mutex> lock(cache->mutex);
      if (cache->words.size() > 200000) cache->words.clear();
      cache->words.emplace(word, std::move(ids_));
    }
  }

  // Text without added tokens.
  void encode_segment(const std::string& text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    if (kind == TokenizerKind::SentencePieceBpe) {
      std::string s;
      if (spm_prepend_space) s = kSpace;
      for (char c : text) {
        if (c == ' ') s += kSpace;
        else s.push_back(c);
      }
      if (!spm_split_on_space) {
        bpe_cached(s, out);
        return;
      }
      size_t start = 0;
      for (size_t p = s.find(kSpace, kSpace.size()); p != std::string::npos; p = s.find(kSpace, p + kSpace.size())) {
        bpe_cached(s.substr(start, p - start), out);
        start = p;
      }
      bpe_cached(s.substr(start), out);
      return;
    }
    std::vector<std::string> pieces{text};
    bool mapped = false;
    for (const PreStep& st : pre) {
      switch (st.kind) {
        case PreStep::Kind::Split: pieces = split_pieces(pieces, st); break;
        case PreStep::Kind::Digits: pieces = split_digits(pieces, st.individual_digits); break;
        case PreStep::Kind::ByteLevel: {
          if (st.add_prefix_space)
            for (auto& p : pieces)
              if (!p.empty() && p[0] != ' ') p.insert(p.begin(), ' ');
          if (st.use_regex) {
            PreStep gpt2 = st;
            if (!gpt2.regex.code) gpt2.regex = Regex(kGpt2Pattern, false);
            pieces = split_pieces(pieces, gpt2);
          }
          for (auto& p : pieces) p = byte_level_map(p);
          mapped = true;
          break;
        }
      }
    }
    for (const auto& p : pieces) {
      if (p.empty()) continue;
      bpe_cached(mapped ? p : byte_level_map(p), out);
    }
  }
};

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::None: return "none";
    case ChatFormat::ChatML: return "chatml";
    case ChatFormat::Llama2: return "llama2";
    case ChatFormat::Llama3: return "llama3";
    case ChatFormat::Mistral: return "mistral";
  }
  return "?";
}

ChatFormat detect_chat_format(std::string_view t) {
  if (t.find("<|im_start|>") != std::string_view::npos) return ChatFormat::ChatML;
  if (t.find("<|start_header_id|>") != std::string_view::npos) return ChatFormat::Llama3;
  if (t.find("<<SYS>>") != std::string_view::npos) return ChatFormat::Llama2;
  if (t.find("[INST]") != std::string_view::npos) return ChatFormat::Mistral;
  return ChatFormat::None;
}

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::Tokenizer(const Tokenizer& o) : impl_(std::make_unique<Impl>(*o.impl_)) {}
Tokenizer& Tokenizer::operator=(const Tokenizer& o) {
  if (this != &o) impl_ = std::make_unique<Impl>(*o.impl_);
  return *this;
}

Tokenizer Tokenizer::from_hf_files(const std::string& json_path, const std::string& config_path) {
  Tokenizer tok;
  Impl& im = *tok.impl_;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file_text(json_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Format, fmt::format("{}: invalid JSON: {}", json_path, e.what()));
  }
  try {
    const auto& model = j.at("model");
    const std::string type = model.value("type", std::string("BPE"));
    if (type != "BPE") throw_unsupported(fmt::format("{}: tokenizer model '{}' (only BPE)", json_path, type));
    const auto& vocab = model.at("vocab");
    if (!vocab.is_object()) throw Error(ErrorKind::Format, fmt::format("{}: model.vocab is not an object", json_path));
    int64_t max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) max_id = std::max<int64_t>(max_id, it.value().get<int64_t>());
    if (j.contains("added_tokens"))
      for (const auto& a : j["added_tokens"]) max_id = std::max<int64_t>(max_id, a.at("id").get<int64_t>());
    if (max_id < 0 || max_id > (1 << 23)) throw Error(ErrorKind::Format, fmt::format("{}: vocabulary ids up to {}", json_path, max_id));
    im.tokens.assign(static_cast<size_t>(max_id + 1), std::string());
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const auto id = it.value().get<int64_t>();
      if (id < 0) throw Error(ErrorKind::Format, fmt::format("{}: negative id for '{}'", json_path, it.key()));
      im.tokens[static_cast<size_t>(id)] = it.key();
    }
    if (j.contains("added_tokens"))
      for (const auto& a : j["added_tokens"]) {
        const auto id = a.at("id").get<int32_t>();
        const std::string content = a.at("content").get<std::string>();
        im.tokens[static_cast<size_t>(id)] = content;
        im.added.push_back({content, id, a.value("special", false)});
      }
    im.index();
    int rank = 0;
    for (const auto& m : model.at("merges")) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) throw Error(ErrorKind::Format, fmt::format("{}: merge '{}' has no space", json_path, s));
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        a = m.at(0).get<std::string>();
        b = m.at(1).get<std::string>();
      }
      im.merge_rank.emplace(a + "\x01" + b, rank++);
    }
    im.ignore_merges = model.value("ignore_merges", false);
    im.byte_fallback = model.value("byte_fallback", false);
    if (model.contains("unk_token") && model["unk_token"].is_string()) im.unk_token = model["unk_token"].get<std::string>();

    // Pre-tokenizer: byte-level (ByteLevel present) or SentencePiece-style (Metaspace or a
    // normalizer that replaces spaces by U+2581).
    std::vector<nlohmann::json> steps;
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
      const auto& p = j["pre_tokenizer"];
      if (p.value("type", "") == "Sequence") for (const auto& s : p.at("pretokenizers")) steps.push_back(s);
      else steps.push_back(p);
    }
    bool byte_level = false, metaspace = false;
    for (const auto& s : steps) {
      const std::string t = s.value("type", "");
      PreStep st;
      if (t == "ByteLevel") {
        st.kind = PreStep::Kind::ByteLevel;
        st.add_prefix_space = s.value("add_prefix_space", false);
        st.use_regex = s.value("use_regex", true);
        byte_level = true;
      } else if (t == "Split") {
        st.kind = PreStep::Kind::Split;
        const auto& pat = s.at("pattern");
        if (pat.contains("Regex")) st.regex = Regex(pat["Regex"].get<std::string>(), false);
        else st.regex = Regex(pat.at("String").get<std::string>(), true);
        const std::string beh = s.value("behavior", "Isolated");
        if (beh == "Removed") st.removed = true;
        else if (beh != "Isolated") throw_unsupported(fmt::format("{}: Split behavior '{}'", json_path, beh));
        st.invert = s.value("invert", false);
      } else if (t == "Digits") {
        st.kind = PreStep::Kind::Digits;
        st.individual_digits = s.value("individual_digits", false);
      } else if (t == "Metaspace") {
        metaspace = true;
        im.spm_prepend_space = s.value("prepend_scheme", std::string("always")) != "never" && s.value("add_prefix_space", true);
        im.spm_split_on_space = s.value("split", true);
        continue;
      } else {
        throw_unsupported(fmt::format("{}: pre-tokenizer '{}'", json_path, t));
      }
      im.pre.push_back(std::move(st));
    }
    bool spm_normalizer = false;
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      std::vector<nlohmann::json> norms;
      const auto& n = j["normalizer"];
      if (n.value("type", "") == "Sequence") for (const auto& s : n.at("normalizers")) norms.push_back(s);
      else norms.push_back(n);
      bool prepend = false;
      for (const auto& s : norms) {
        const std::string t = s.value("type", "");
        if (t == "Prepend") prepend = true;
        else if (t == "Replace") spm_normalizer = true;
        else if (t == "NFC") continue;  // inputs are taken as already NFC (see docs/engine.md)
        else throw_unsupported(fmt::format("{}: normalizer '{}'", json_path, t));
      }
      if (spm_normalizer) {
        im.spm_prepend_space = prepend;
        im.spm_split_on_space = false;
      }
    }
    im.kind = (metaspace || spm_normalizer) && !byte_level ? TokenizerKind::SentencePieceBpe : TokenizerKind::ByteLevelBpe;
    if (im.kind == TokenizerKind::ByteLevelBpe && !byte_level)
      throw_unsupported(fmt::format("{}: BPE without a ByteLevel or SentencePiece pre-tokenizer", json_path));
    // Post-processor: a template that starts with a special token means BOS is added.
    if (j.contains("post_processor") && j["post_processor"].is_object()) {
      const auto& pp = j["post_processor"];
      if (pp.value("type", "") == "TemplateProcessing" && pp.contains("single") && !pp["single"].empty() &&
          pp["single"][0].contains("SpecialToken")) {
        im.add_bos = true;
        im.bos = im.lookup(pp["single"][0]["SpecialToken"].value("id", ""));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Format, fmt::format("{}: {}", json_path, e.what()));
  }

  if (!config_path.empty()) {
    nlohmann::json c;
    try {
      c = nlohmann::json::parse(read_file_text(config_path));
      if (c.contains("bos_token")) {
        const int32_t id = im.lookup(token_content(c["bos_token"]));
        if (id >= 0) im.bos = id;
      }
      if (c.contains("eos_token")) im.eos = im.lookup(token_content(c["eos_token"]));
      if (c.contains("unk_token") && im.unk < 0) im.unk = im.lookup(token_content(c["unk_token"]));
      if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) im.add_bos = c["add_bos_token"].get<bool>();
      if (c.contains("chat_template") && c["chat_template"].is_string()) im.chat_template = c["chat_template"].get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorKind::Format, fmt::format("{}: {}", config_path, e.what()));
    }
    if (im.chat_template.empty()) {
      // Transformers 5 writes the template to its own file.
      const auto jinja = std::filesystem::path(config_path).parent_path() / "chat_template.jinja";
      if (std::filesystem::exists(jinja)) im.chat_template = read_file_text(jinja.string());
    }
  }
  im.finish();
  return tok;
}

Tokenizer Tokenizer::from_gguf(const GgufFile& g) {
  Tokenizer tok;
  Impl& im = *tok.impl_;
  const std::string model = g.get_string("tokenizer.ggml.model");
  const GgufValue* tokens = g.find_value("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != GgufValue::Type::Array || tokens->strings.empty())
    throw Error(ErrorKind::Format, fmt::format("{}: missing tokenizer.ggml.tokens", g.path()));
  im.tokens = tokens->strings;
  const size_t n = im.tokens.size();
  std::vector<int64_t> types(n, 1);
  if (const GgufValue* t = g.find_value("tokenizer.ggml.token_type")) {
    if (t->ints.size() != n)
      throw_mismatch(fmt::format("{}: tokenizer.ggml.token_type", g.path()), fmt::format("{} entries", n), fmt::format("{} entries", t->ints.size()));
    types = t->ints;
  }
  for (size_t i = 0; i < n; ++i)
    if (types[i] == 3 || types[i] == 4)  // control, user-defined
      im.added.push_back({im.tokens[i], static_cast<int32_t>(i), types[i] == 3});
  auto id_or = [&](const char* key) -> int32_t {
    auto v = g.get_int_or(key);
    if (!v) return -1;
    if (*v < 0 || *v >= static_cast<int64_t>(n))
      throw Error(ErrorKind::Format, fmt::format("{}: {} = {} is outside the vocabulary of {}", g.path(), key, *v, n));
    return static_cast<int32_t>(*v);
  };
  im.bos = id_or("tokenizer.ggml.bos_token_id");
  im.eos = id_or("tokenizer.ggml.eos_token_id");
  im.unk = id_or("tokenizer.ggml.unknown_token_id");
  if (model == "gpt2") {
    im.kind = TokenizerKind::ByteLevelBpe;
    const GgufValue* merges = g.find_value("tokenizer.ggml.merges");
    if (!merges) throw Error(ErrorKind::Format, fmt::format("{}: missing tokenizer.ggml.merges", g.path()));
    int rank = 0;
    for (const std::string& m : merges->strings) {
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) throw Error(ErrorKind::Format, fmt::format("{}: merge '{}' has no space", g.path(), m));
      im.merge_rank.emplace(m.substr(0, sp) + "\x01" + m.substr(sp + 1), rank++);
    }
    std::string pre = "default";
    if (const GgufValue* p = g.find_value("tokenizer.ggml.pre"); p && p->type == GgufValue::Type::String) pre = p->s;
    PreStep bl;
    bl.kind = PreStep::Kind::ByteLevel;
    if (pre == "llama-bpe" || pre == "llama3" || pre == "smaug-bpe") {
      bl.regex = Regex(kLlama3Pattern, false);
      im.ignore_merges = true;
    } else if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
      bl.regex = Regex(kQwen2Pattern, false);
    } else if (pre == "smollm" || pre == "starcoder" || pre == "refact") {
      PreStep digits;  // these vocabularies were trained with every digit alone
      digits.kind = PreStep::Kind::Digits;
      digits.individual_digits = true;
      im.pre.push_back(std::move(digits));
    } else if (pre != "default" && pre != "gpt-2" && pre != "gpt2") {
      throw_unsupported(fmt::format("{}: tokenizer.ggml.pre '{}' (supported: default, gpt-2, llama-bpe, qwen2, smollm, starcoder)", g.path(), pre));
    }
    im.pre.push_back(std::move(bl));
  } else if (model == "llama") {
    im.kind = TokenizerKind::SentencePieceBpe;
    const GgufValue* scores = g.find_value("tokenizer.ggml.scores");
    if (!scores || scores->floats.size() != n)
      throw Error(ErrorKind::Format, fmt::format("{}: tokenizer.ggml.scores must hold {} scores", g.path(), n));
    im.scores.assign(scores->floats.begin(), scores->floats.end());
    im.byte_fallback = true;
    if (auto a = g.get_int_or("tokenizer.ggml.add_space_prefix")) im.spm_prepend_space = *a != 0;
    im.add_bos = true;
  } else {
    throw_unsupported(fmt::format("{}: tokenizer model '{}' (supported: gpt2, llama)", g.path(), model));
  }
  if (auto a = g.get_int_or("tokenizer.ggml.add_bos_token")) im.add_bos = *a != 0;
  if (const GgufValue* t = g.find_value("tokenizer.chat_template"); t && t->type == GgufValue::Type::String) im.chat_template = t->s;
  im.finish();
  return tok;
}

TokenizerKind Tokenizer::kind() const { return impl_->kind; }
int Tokenizer::vocab_size() const { return static_cast<int>(impl_->tokens.size()); }

std::vector<int32_t> Tokenizer::encode(std::string_view raw, bool add_bos, bool parse_special) const {
  const Impl& im = *impl_;
  const std::string text = utf8_sanitize(raw);
  std::vector<int32_t> out;
  if (add_bos && im.bos >= 0) out.push_back(im.bos);
  size_t seg = 0, i = 0;
  while (i < text.size()) {
    const Impl::Added* hit = nullptr;
    for (const auto& a : im.added) {  // longest first
      if (!parse_special && a.special) continue;
      if (!a.content.empty() && text.compare(i, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    im.encode_segment(text.substr(seg, i - seg), out);
    out.push_back(hit->id);
    i += hit->content.size();
    seg = i;
  }
  im.encode_segment(text.substr(seg), out);
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  const Impl& im = *impl_;
  if (id < 0 || id >= static_cast<int32_t>(im.tokens.size()))
    throw_invalid(fmt::format("token id {} outside the vocabulary of {}", id, im.tokens.size()));
  const std::string& t = im.tokens[static_cast<size_t>(id)];
  if (im.special[static_cast<size_t>(id)]) return t;
  for (const auto& a : im.added)
    if (a.id == id) return t;
  if (im.kind == TokenizerKind::SentencePieceBpe) {
    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
      for (int b = 0; b < 256; ++b)
        if (im.byte_tokens[b] == id) return std::string(1, static_cast<char>(b));
    }
    std::string out;
    for (size_t p = 0; p < t.size();) {
      if (t.compare(p, kSpace.size(), kSpace) == 0) {
        out.push_back(' ');
        p += kSpace.size();
      } else {
        out.push_back(t[p++]);
      }
    }
    return out;
  }
  std::string out;
  for (size_t p = 0; p < t.size();) {
    const size_t start = p;
    const uint32_t cp = next_code_point(t, p);
    const int b = code_point_to_byte(cp);
    if (b >= 0) out.push_back(static_cast<char>(b));
    else out.append(t, start, p - start);
  }
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (skip_special && is_special(id)) continue;
    std::string piece = token_bytes(id);
    if (first && impl_->kind == TokenizerKind::SentencePieceBpe && impl_->spm_prepend_space && !piece.empty() &&
        piece[0] == ' ' && !is_special(id))
      piece.erase(0, 1);
    first = false;
    out += piece;
  }
  return out;
}

const std::string& Tokenizer::token_string(int32_t id) const {
  if (id < 0 || id >= vocab_size()) throw_invalid(fmt::format("token id {} outside the vocabulary of {}", id, vocab_size()));
  return impl_->tokens[static_cast<size_t>(id)];
}
int32_t Tokenizer::token_id(std::string_view token) const { return impl_->lookup(std::string(token)); }
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[static_cast<size_t>(id)] != 0;
}
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::add_bos_default() const { return impl_->add_bos; }
const std::vector<int32_t>& Tokenizer::stop_ids() const { return impl_->stop; }
bool Tokenizer::is_stop(int32_t id) const {
  return std::find(impl_->stop.begin(), impl_->stop.end(), id) != impl_->stop.end();
}
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }
ChatFormat Tokenizer::chat_format() const { return impl_->chat_format; }

std::string Tokenizer::apply_chat_template(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  const Impl& im = *impl_;
  for (const auto& m : messages)
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      throw_invalid(fmt::format("chat message role '{}' (system, user or assistant)", m.role));
  const std::string bos = im.bos >= 0 ? im.tokens[static_cast<size_t>(im.bos)] : "";
  const std::string eos = im.eos >= 0 ? im.tokens[static_cast<size_t>(im.eos)] : "";
  std::string out;
  switch (im.chat_format) {
    case ChatFormat::ChatML: {
      if (!im.default_system.empty() && (messages.empty() || messages[0].role != "system"))
        out += "<|im_start|>system\n" + im.default_system + "<|im_end|>\n";
      for (const auto& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    }
    case ChatFormat::Llama3: {
      out += bos;
      auto strip = [](std::string s) {
        const auto b = s.find_first_not_of(" \t\n\r");
        if (b == std::string::npos) return std::string();
        return s.substr(b, s.find_last_not_of(" \t\n\r") - b + 1);
      };
      for (const auto& m : messages)
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + strip(m.content) + "<|eot_id|>";
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    }
    case ChatFormat::Llama2:
    case ChatFormat::Mistral: {
      const bool llama2 = im.chat_format == ChatFormat::Llama2;
      std::string system;
      size_t start = 0;
      if (!messages.empty() && messages[0].role == "system") {
        system = messages[0].content;
        start = 1;
      }
      bool first_user = true;
      for (size_t i = start; i < messages.size(); ++i) {
        const auto& m = messages[i];
        if (m.role == "user") {
          std::string content = m.content;
          if (first_user && !system.empty())
            content = llama2 ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content : system + "\n\n" + content;
          out += (llama2 || first_user ? bos : "") + "[INST] " + content + " [/INST]";
          first_user = false;
        } else if (m.role == "assistant") {
          out += (llama2 ? " " + m.content + " " : m.content) + eos;
        } else {
          throw_invalid("a system message is only allowed first");
        }
      }
      return out;
    }
    case ChatFormat::None:
      for (const auto& m : messages) out += m.role + ": " + m.content + "\n";
      if (add_generation_prompt) out += "assistant: ";
      return out;
  }
  return out;
}

std::string TokenStreamer::push(int32_t id) {
  if (skip_special_ && tokenizer_->is_special(id)) return {};
  pending_ += tokenizer_->token_bytes(id);
  // Emit the longest prefix that ends on a complete UTF-8 character.
  size_t i = 0, good = 0;
  while (i < pending_.size()) {
    const size_t n = utf8_valid_len(pending_, i);
    if (n == 0) {
      // Either a truncated sequence at the end (wait for more) or an invalid byte (pass it on).
      const auto c = static_cast<unsigned char>(pending_[i]);
      size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
      if (need && i + need > pending_.size()) break;
      i += 1;
    } else {
      i += n;
    }
    good = i;
  }
  std::string out = pending_.substr(0, good);
  pending_.erase(0, good);
  return out;
}

std::string TokenStreamer::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace glq::model
