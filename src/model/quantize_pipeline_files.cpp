// quantize_model_files(): the pipeline from files, with every check that can fail early made
// before the model is loaded or any quantization work starts.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/format/safetensors_io.hpp"
#include "glq/model/gguf.hpp"
#include "glq/model/glq_checkpoint.hpp"
#include "glq/model/loader.hpp"
#include "glq/model/quantize.hpp"

namespace glq::model {

namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw_io(p.string(), "cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void copy_file_atomic(const fs::path& from, const fs::path& to) {
  const std::string text = read_text(from);
  format::AtomicFile f(to.string());
  f.write(text.data(), text.size());
  f.commit();
}

std::string fingerprint_of(const std::string& path) {
  std::error_code ec;
  fs::path p(path);
  if (fs::is_directory(p)) p /= fs::exists(p / "model.safetensors") ? "model.safetensors" : "config.json";
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return fs::absolute(path, ec).string();
  return fmt::format("{} {} bytes mtime {}", fs::absolute(p, ec).string(), static_cast<long long>(st.st_size),
                     static_cast<long long>(st.st_mtime));
}

// The output folder's parent must exist and be writable (checked before hours of work).
void check_output(const std::string& out_dir, bool overwrite) {
  const fs::path out = fs::absolute(fs::path(out_dir));
  std::error_code ec;
  if (fs::exists(out, ec) && !overwrite) throw_invalid(fmt::format("output {} already exists (pass --overwrite to replace it)", out_dir));
  const fs::path parent = out.parent_path();
  if (!fs::is_directory(parent, ec)) throw_io(out_dir, fmt::format("the folder {} does not exist", parent.string()));
  if (::access(parent.c_str(), W_OK) != 0) throw_io(out_dir, fmt::format("the folder {} is not writable", parent.string()));
}

}  // namespace

QuantizeResult quantize_model_files(const std::string& model_path, const std::string& calib_path,
                                    const std::string& out_dir, const QuantizeSettings& settings,
                                    const QuantizeProgress& progress) {
  auto note = [&](const std::string& m) {
    if (progress.note) progress.note(m);
  };
  std::error_code ec;
  if (!fs::exists(model_path, ec)) throw_io(model_path, "no such file or directory");
  if (is_glq_checkpoint(model_path)) throw_invalid(fmt::format("{} is already a GLQ checkpoint", model_path));
  if (!fs::exists(calib_path, ec)) throw_io(calib_path, "calibration file: no such file");
  check_output(out_dir, settings.overwrite);

  CheckpointSource source;
  source.calib_name = fs::path(calib_path).filename().string();
  source.fingerprint = fingerprint_of(model_path);
  if (fs::is_directory(model_path)) {
    const fs::path dir(model_path);
    if (!fs::exists(dir / "tokenizer.json"))
      throw_io(model_path, "missing tokenizer: the directory has no tokenizer.json (a GLQ checkpoint carries its tokenizer)");
    try {
      source.hf_config = nlohmann::ordered_json::parse(read_text(dir / "config.json"));
    } catch (const nlohmann::json::exception& e) {
      throw_format((dir / "config.json").string(), fmt::format("invalid JSON: {}", e.what()));
    }
    source.write_tokenizer = [dir](const std::string& to) {
      for (const char* f : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                            "special_tokens_map.json"})
        if (fs::exists(dir / f)) copy_file_atomic(dir / f, fs::path(to) / f);
    };
  } else {
    auto gguf = std::make_shared<const GgufFile>(model_path);
    if (!gguf->find_value("tokenizer.ggml.tokens") || !gguf->find_value("tokenizer.ggml.model"))
      throw_io(model_path, "missing tokenizer: the GGUF file has no tokenizer.ggml.* metadata");
    if (gguf->get_string("tokenizer.ggml.model") != "gpt2")
      throw_unsupported(fmt::format("{}: tokenizer model '{}': GLQ writes tokenizer.json only for byte-level BPE (gpt2); "
                                    "quantize from the model's Hugging Face directory instead",
                                    model_path, gguf->get_string("tokenizer.ggml.model")));
    source.hf_config = hf_config_json(gguf_model_config(*gguf));
    source.write_tokenizer = [gguf](const std::string& to) { write_hf_tokenizer_from_gguf(*gguf, to); };
  }

  const auto t0 = std::chrono::steady_clock::now();
  // The weights stay in the memory-mapped file; the pipeline reads one layer at a time.
  LoadOptions load;
  load.mapped = true;
  auto model = load_model(model_path, load);
  note(fmt::format("loaded {} ({}) in {:.1f} s", model_path, model->describe(),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
  const std::string text = read_text(calib_path);
  const Tokenizer& tok = model->tokenizer();
  const std::vector<int32_t> ids = tok.encode(text, tok.add_bos_default(), false);
  const int seqs = settings.calib_seqs != 0 ? settings.calib_seqs : default_calib_seqs(settings.bits);
  note(fmt::format("calibration: {} has {} bytes, {} tokens; drawing {} x {} tokens", calib_path, text.size(), ids.size(),
                   seqs, settings.seq_len));
  const auto calib = make_calibration_set(ids, seqs, settings.seq_len, settings.seed, calib_path);
  // End-to-end tuning checks itself on windows the quantizer never saw, drawn after the
  // calibration's from the same shuffle (where the text has room; else it holds out some of the
  // calibration windows).
  std::vector<std::vector<int32_t>> validation, extra;
  if (settings.finetune_epochs > 0) {
    const int v = std::max(2, seqs / 8);
    validation = make_windows_after(ids, seqs, v, settings.seq_len, settings.seed);
    if (validation.empty())
      note(fmt::format("finetune: {} has no room for validation windows beyond the calibration's; holding out {} of them",
                       calib_path, std::max(1, seqs / 8)));
    if (settings.finetune_windows != 0 && !validation.empty()) {
      const int64_t room = static_cast<int64_t>(ids.size()) / settings.seq_len - seqs - v;
      const int want = settings.finetune_windows > 0 ? settings.finetune_windows : 3 * seqs;
      if (settings.finetune_windows > 0 && room < want)
        throw_invalid(fmt::format("calibration text {} is too short for {} more tuning windows of {} tokens ({} tokens)",
                                  calib_path, want, settings.seq_len, ids.size()));
      const int m = static_cast<int>(std::min<int64_t>(want, room));
      if (m > 0) extra = make_windows_after(ids, seqs + v, m, settings.seq_len, settings.seed);
      note(fmt::format("finetune: {} validation and {} extra training windows{}", validation.size(), extra.size(),
                       m < want ? fmt::format(" (the text holds no more than {})", m) : ""));
    }
  }
  return quantize_model(*model, calib, source, out_dir, settings, progress, validation, extra);
}

}  // namespace glq::model
