// glq.Model: a loaded model (GGUF file, Hugging Face directory or GLQ checkpoint) with its
// tokenizer, generation, perplexity and logits; and the reader of a GLQ checkpoint's quantized
// linears that the PyTorch layers are built from.
#include <pybind11/stl.h>

#include <Python.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common.hpp"
#include "glq/error.hpp"
#include "glq/format/quantization_config.hpp"
#include "glq/format/quantized_tensors.hpp"
#include "glq/format/safetensors_io.hpp"
#include "glq/model/loader.hpp"
#include "glq/model/model.hpp"
#include "glq/model/perplexity.hpp"
#include "glq/model/sampler.hpp"
#include "qmatrix.hpp"

namespace glq::python {

namespace {

namespace fs = std::filesystem;

// One model; calls on it are serialised (the engine's scratch is per model).
struct PyModel {
  std::unique_ptr<model::Model> m;
  std::string path;
  std::mutex mutex;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_io(path, "cannot open");
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

std::vector<int32_t> ids_from(py::handle obj, const model::Model& m, const char* what) {
  std::vector<int32_t> ids;
  for (py::handle h : obj) {
    const int64_t id = h.cast<int64_t>();
    if (id < 0 || id >= m.vocab_size())
      throw py::value_error(std::string(what) + ": token id " + std::to_string(id) + " is out of range [0, " +
                            std::to_string(m.vocab_size()) + ")");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

model::SamplingOptions sampling(float temperature, int top_k, float top_p, float repetition_penalty,
                                int repetition_window, uint64_t seed) {
  if (top_k < 0) throw py::value_error("top_k must be >= 0, got " + std::to_string(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) throw py::value_error("top_p must be in (0, 1], got " + std::to_string(top_p));
  if (!(repetition_penalty > 0.0f)) throw py::value_error("repetition_penalty must be > 0");
  model::SamplingOptions o;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.repetition_penalty = repetition_penalty;
  o.repetition_window = repetition_window;
  o.seed = seed;
  return o;
}

// The decode loop of `glq run`: the prompt in one forward, then one token at a time. on_token
// (with the GIL held) receives each new id; it returns false to stop.
std::vector<int32_t> decode(PyModel& self, std::vector<int32_t> ids, int max_tokens,
                            const model::SamplingOptions& opt, bool stop_at_eos, const py::object& on_token) {
  const model::Model& m = *self.m;
  if (ids.empty()) throw py::value_error("generate: the prompt encodes to no tokens");
  if (max_tokens < 0) throw py::value_error("generate: max_tokens must be >= 0");
  const int64_t ctx = m.config().max_context;
  if (static_cast<int64_t>(ids.size()) >= ctx)
    throw py::value_error("generate: prompt of " + std::to_string(ids.size()) +
                          " tokens does not fit the context of " + std::to_string(ctx));
  std::vector<int32_t> out;
  if (max_tokens == 0) return out;
  const bool have_tok = m.has_tokenizer();
  py::gil_scoped_release nogil;
  std::lock_guard<std::mutex> lock(self.mutex);
  const int capacity = static_cast<int>(std::min<int64_t>(ctx, static_cast<int64_t>(ids.size()) + max_tokens));
  model::KVCache cache = m.make_cache(capacity);
  model::Sampler sampler(opt);
  std::vector<float> logits(static_cast<size_t>(m.vocab_size()));
  m.forward(ids, cache, logits.data());
  for (int i = 0; i < max_tokens; ++i) {
    const int32_t next = sampler.sample(logits, ids);
    ids.push_back(next);
    out.push_back(next);
    const bool stop = stop_at_eos && have_tok && m.tokenizer().is_stop(next);
    {
      // Ctrl-C: a pending KeyboardInterrupt unwinds the loop as error_already_set.
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (!on_token.is_none() && !py::cast<bool>(on_token(next))) break;
    }
    if (stop || i + 1 == max_tokens || cache.size() >= cache.capacity()) break;
    m.forward(std::span<const int32_t>(&next, 1), cache, logits.data());
  }
  return out;
}

py::dict perplexity(PyModel& self, const std::string& text, int ctx, int64_t max_tokens, py::object progress) {
  const model::Model& m = *self.m;
  if (ctx < 2) throw py::value_error("perplexity: ctx must be at least 2, got " + std::to_string(ctx));
  if (ctx > m.config().max_context)
    throw py::value_error("perplexity: ctx " + std::to_string(ctx) + " exceeds the model's context length " +
                          std::to_string(m.config().max_context));
  model::PerplexityResult r;
  int64_t tokens_in_text = 0;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(self.mutex);
    const auto& tok = m.tokenizer();
    // As `glq perplexity`: bos when the tokenizer adds one, special-token text read as text.
    std::vector<int32_t> ids = tok.encode(text, tok.add_bos_default(), false);
    tokens_in_text = static_cast<int64_t>(ids.size());
    if (max_tokens > 0 && static_cast<int64_t>(ids.size()) > max_tokens) ids.resize(static_cast<size_t>(max_tokens));
    if (static_cast<int64_t>(ids.size()) < 2)
      throw py::value_error("perplexity: the text has fewer than 2 tokens");
    auto cb = [&](int done, int total) {
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (!progress.is_none()) progress(done, total);
    };
    r = model::evaluate_perplexity(m, ids, ctx, cb);
  }
  py::dict d;
  d["ppl"] = r.ppl;
  d["nll_mean"] = r.tokens_scored ? r.nll_sum / static_cast<double>(r.tokens_scored) : 0.0;
  d["tokens"] = r.tokens_scored;
  d["tokens_evaluated"] = r.tokens_used;
  d["tokens_in_text"] = tokens_in_text;
  d["windows"] = r.windows;
  d["ctx"] = r.ctx;
  d["seconds"] = r.seconds;
  return d;
}

py::array logits(PyModel& self, py::handle ids_obj, bool all) {
  const model::Model& m = *self.m;
  const std::vector<int32_t> ids = ids_from(ids_obj, m, "logits");
  if (ids.empty()) throw py::value_error("logits: no tokens");
  if (static_cast<int64_t>(ids.size()) > m.config().max_context)
    throw py::value_error("logits: " + std::to_string(ids.size()) + " tokens exceed the context length " +
                          std::to_string(m.config().max_context));
  const size_t n = all ? ids.size() : 1;
  std::vector<float> out(n * static_cast<size_t>(m.vocab_size()));
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(self.mutex);
    model::KVCache cache = m.make_cache(static_cast<int>(ids.size()));
    m.forward(ids, cache, out.data(), all);
  }
  if (all) return owning_array(std::move(out), {static_cast<py::ssize_t>(n), m.vocab_size()});
  return owning_array(std::move(out), {m.vocab_size()});
}

py::dict config_dict(const model::ModelConfig& c) {
  py::dict d;
  d["arch"] = model::arch_name(c.arch);
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.hidden_size;
  d["intermediate_size"] = c.intermediate_size;
  d["num_layers"] = c.num_layers;
  d["num_heads"] = c.num_heads;
  d["num_kv_heads"] = c.num_kv_heads;
  d["head_dim"] = c.head_dim;
  d["max_context"] = c.max_context;
  d["rope_theta"] = c.rope_theta;
  d["norm_eps"] = c.norm_eps;
  d["tie_embeddings"] = c.tie_embeddings;
  d["bos_token_id"] = c.bos_token_id;
  d["eos_token_id"] = c.eos_token_id;
  return d;
}

model::LinearKind parse_kind(const std::string& name) {
  for (model::LinearKind k : model::kAllLinearKinds)
    if (name == model::linear_kind_name(k)) return k;
  throw py::value_error("unknown linear '" + name + "' (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
}

// The quantized linears of a GLQ checkpoint: [(name, QuantizedMatrix, bias or None)], in the
// order of quantization_config.linears.
py::list checkpoint_linears(const std::string& dir) {
  const fs::path cfg_path = fs::path(dir) / "config.json";
  const fs::path st_path = fs::path(dir) / "model.safetensors";
  if (!fs::exists(cfg_path)) throw_io(dir, "not a GLQ checkpoint: no config.json");
  if (!fs::exists(st_path)) throw_io(dir, "GLQ checkpoint has no model.safetensors");
  struct Item {
    std::string name;
    PyQuantizedMatrix q;
    std::vector<float> bias;
  };
  std::vector<Item> items;
  {
    py::gil_scoped_release nogil;
    const nlohmann::json cfg = nlohmann::json::parse(read_file(cfg_path.string()));
    if (!format::is_glq_config(cfg))
      throw_format(cfg_path.string(), "quantization_config.quant_method is not \"glq\"");
    const format::QuantizationConfig qc =
        format::parse_quantization_config(cfg["quantization_config"], cfg_path.string());
    const format::SafetensorsReader file(st_path.string());
    for (const auto& e : qc.linears) {
      Item it;
      it.name = e.name;
      it.q.q = std::make_shared<const codec::QuantizedMatrix>(format::quantized_matrix_from_tensors(file, e));
      if (const format::StTensorView* b = file.find(e.name + ".bias")) {
        if (b->dtype != format::StDType::F32 || b->numel() != e.rows)
          throw_mismatch(st_path.string() + ": " + e.name + ".bias", "F32 of " + std::to_string(e.rows) + " values",
                         std::string(format::st_dtype_name(b->dtype)) + " of " + std::to_string(b->numel()));
        it.bias = format::copy_f32(*b);
      }
      items.push_back(std::move(it));
    }
  }
  py::list out;
  for (auto& it : items) {
    py::object bias = py::none();
    if (!it.bias.empty()) bias = owning_array(std::move(it.bias), {static_cast<py::ssize_t>(it.q.get().rows)});
    out.append(py::make_tuple(it.name, std::move(it.q), bias));
  }
  return out;
}

}  // namespace

void bind_model(py::module_& m) {
  py::class_<PyModel>(m, "Model", "A Llama-family model on the CPU engine, with its tokenizer.")
      .def_property_readonly("path", [](const PyModel& s) { return s.path; })
      .def_property_readonly("config", [](const PyModel& s) { return config_dict(s.m->config()); })
      .def_property_readonly("parameter_count", [](const PyModel& s) { return s.m->parameter_count(); })
      .def_property_readonly("has_tokenizer", [](const PyModel& s) { return s.m->has_tokenizer(); })
      .def_property_readonly("tokenizer_vocab_size", [](const PyModel& s) { return s.m->tokenizer().vocab_size(); },
                             "tokens the tokenizer knows (the model's vocab_size may be larger, padded)")
      .def("describe", [](const PyModel& s) { return s.m->describe(); })
      .def("tokenize", [](const PyModel& s, const std::string& text, std::optional<bool> add_bos, bool parse_special) {
        const auto& tok = s.m->tokenizer();
        return tok.encode(text, add_bos.value_or(tok.add_bos_default()), parse_special);
      }, py::arg("text"), py::arg("add_bos") = py::none(), py::arg("parse_special") = true)
      .def("detokenize", [](const PyModel& s, py::handle ids, bool skip_special) {
        const std::vector<int32_t> v = ids_from(ids, *s.m, "detokenize");
        return py::bytes(s.m->tokenizer().decode(v, skip_special));
      }, py::arg("ids"), py::arg("skip_special") = false, "the bytes of the tokens (may end inside a UTF-8 character)")
      .def("apply_chat_template", [](const PyModel& s, const std::vector<std::pair<std::string, std::string>>& msgs,
                                     bool add_generation_prompt) {
        std::vector<model::ChatMessage> v;
        for (const auto& [role, content] : msgs) v.push_back({role, content});
        return s.m->tokenizer().apply_chat_template(v, add_generation_prompt);
      }, py::arg("messages"), py::arg("add_generation_prompt") = true)
      .def("is_stop", [](const PyModel& s, int32_t id) { return s.m->tokenizer().is_stop(id); })
      .def("generate_tokens", [](PyModel& s, py::handle prompt_ids, int max_tokens, float temperature, int top_k, float top_p,
                                 float repetition_penalty, int repetition_window, uint64_t seed, bool stop_at_eos,
                                 py::object on_token) {
        std::vector<int32_t> ids = ids_from(prompt_ids, *s.m, "generate_tokens");
        return decode(s, std::move(ids), max_tokens,
                      sampling(temperature, top_k, top_p, repetition_penalty, repetition_window, seed), stop_at_eos,
                      on_token);
      }, py::arg("prompt_ids"), py::arg("max_tokens") = 64, py::arg("temperature") = 0.0f, py::arg("top_k") = 0,
         py::arg("top_p") = 1.0f, py::arg("repetition_penalty") = 1.0f, py::arg("repetition_window") = 64,
         py::arg("seed") = 0x5eed, py::arg("stop_at_eos") = true, py::arg("on_token") = py::none())
      .def("perplexity_text", &perplexity, py::arg("text"), py::arg("ctx") = 1024, py::arg("max_tokens") = 0,
           py::arg("progress") = py::none())
      .def("logits", &logits, py::arg("ids"), py::arg("all") = false,
           "logits of the last token (vocab,), or of every token (n, vocab), from an empty cache")
      .def("linear", [](const PyModel& s, int layer, const std::string& kind) -> py::object {
        if (layer < 0 || layer >= s.m->num_layers())
          throw py::value_error("layer " + std::to_string(layer) + " out of range [0, " + std::to_string(s.m->num_layers()) + ")");
        const model::Linear& l = s.m->layer(layer).linear(parse_kind(kind));
        if (const codec::QuantizedMatrix* q = l.quantized_weight()) {
          PyQuantizedMatrix p;
          p.q = std::make_shared<const codec::QuantizedMatrix>(*q);
          return py::cast(std::move(p));
        }
        std::vector<float> w = l.to_dense();
        return owning_array(std::move(w), {l.rows(), l.cols()});
      }, py::arg("layer"), py::arg("kind"),
      "a layer's weight: a QuantizedMatrix when quantized, else the dense (rows, cols) float32 array")
      .def("__repr__", [](const PyModel& s) { return "<glq.Model " + s.path + ": " + s.m->describe() + ">"; });

  m.def("load", [](const std::string& path) {
    auto out = std::make_unique<PyModel>();
    out->path = path;
    py::gil_scoped_release nogil;
    out->m = model::load_model(path);
    return out;
  }, py::arg("path"), "a GGUF file, a Hugging Face directory or a GLQ checkpoint directory");

  m.def("checkpoint_linears", &checkpoint_linears, py::arg("dir"),
        "the quantized linears of a GLQ checkpoint: [(name, QuantizedMatrix, bias or None)]");
}

}  // namespace glq::python
