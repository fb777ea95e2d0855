// glq.quantize: the quantization pipeline (glq/model/quantize.hpp) from files, with progress
// events delivered to a Python callable.
#include <pybind11/stl.h>

#include <Python.h>

#include "common.hpp"
#include "glq/model/quantize.hpp"

#include <nlohmann/json.hpp>

namespace glq::python {

namespace {

py::dict linear_dict(const model::LinearReport& r) {
  py::dict d;
  d["name"] = r.name;
  d["layer"] = r.layer;
  d["bits"] = r.bits;
  d["rows"] = r.rows;
  d["cols"] = r.cols;
  d["proxy_loss"] = r.proxy_loss;
  d["relative_weight_error"] = r.relative_weight_error;
  d["stored_bytes"] = r.stored_bytes;
  d["warnings"] = r.warnings;
  return d;
}

// Calls progress(event) with the GIL held; a pending Ctrl-C (or an exception raised by the
// callable) stops the pipeline, whose finished layers stay in OUT.partial/ for a resume.
void deliver(const py::object& progress, py::dict event) {
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  if (!progress.is_none()) progress(event);
}

}  // namespace

void bind_quantize(py::module_& m) {
  m.def(
      "quantize",
      [](const std::string& model_path, const std::string& calib_path, const std::string& out_dir, double bits,
         int calib_seqs, int seq_len, uint64_t seed, double damp, bool rht, bool ldlq, bool keep_head_16bit,
         const std::string& dtype_16bit, bool resume, bool overwrite, int finetune_epochs, double finetune_lr,
         int finetune_windows, bool finetune_bias, bool finetune_stage_gains, bool finetune_extra_only,
         py::object progress) {
        model::QuantizeSettings s;
        s.bits = bits;
        s.calib_seqs = calib_seqs;
        s.seq_len = seq_len;
        s.seed = seed;
        s.damp = damp;
        s.rht = rht;
        s.ldlq = ldlq;
        s.keep_head_16bit = keep_head_16bit;
        s.dtype_16bit = dtype_16bit;
        s.resume = resume;
        s.overwrite = overwrite;
        s.finetune_epochs = finetune_epochs;
        s.finetune_lr = finetune_lr;
        s.finetune_windows = finetune_windows;
        s.finetune_bias = finetune_bias;
        s.finetune_stage_gains = finetune_stage_gains;
        s.finetune_extra_only = finetune_extra_only;
        model::QuantizeProgress p;
        p.note = [&](const std::string& message) {
          py::gil_scoped_acquire gil;
          py::dict e;
          e["event"] = "note";
          e["message"] = message;
          deliver(progress, e);
        };
        p.step = [&](int done, int total, const std::string& what, double eta_s) {
          py::gil_scoped_acquire gil;
          py::dict e;
          e["event"] = "step";
          e["done"] = done;
          e["total"] = total;
          e["what"] = what;
          e["eta_s"] = eta_s;
          deliver(progress, e);
        };
        p.layer_done = [&](int layer, int total, const std::vector<model::LinearReport>& linears, double layer_s,
                           double eta_s) {
          py::gil_scoped_acquire gil;
          py::dict e;
          e["event"] = "layer";
          e["layer"] = layer;
          e["total"] = total;
          py::list l;
          for (const auto& r : linears) l.append(linear_dict(r));
          e["linears"] = l;
          e["seconds"] = layer_s;
          e["eta_s"] = eta_s;
          deliver(progress, e);
        };
        model::QuantizeResult r;
        {
          py::gil_scoped_release nogil;
          r = model::quantize_model_files(model_path, calib_path, out_dir, s, p);
        }
        py::dict d;
        d["out_dir"] = r.out_dir;
        py::list l;
        for (const auto& x : r.linears) l.append(linear_dict(x));
        d["linears"] = l;
        d["file_bytes"] = r.file_bytes;
        d["linear_weights"] = r.linear_weights;
        d["linear_bytes"] = r.linear_bytes;
        d["total_weights"] = r.total_weights;
        d["linear_bpw"] = r.linear_bpw;
        d["file_bpw"] = r.file_bpw;
        d["seconds"] = r.seconds;
        d["resumed_layers"] = r.resumed_layers;
        if (!r.finetune.is_null()) {  // the checkpoint's record, and the seconds
          nlohmann::ordered_json ft = r.finetune;
          ft["seconds"] = r.finetune_seconds;
          d["finetune"] = py::module_::import("json").attr("loads")(ft.dump());
        }
        return d;
      },
      py::arg("model_path"), py::arg("calib_path"), py::arg("out_dir"), py::arg("bits") = 2.0,
      py::arg("calib_seqs") = 0, py::arg("seq_len") = 512, py::arg("seed") = 0x5eed, py::arg("damp") = -1.0,
      py::arg("rht") = true, py::arg("ldlq") = true, py::arg("keep_head_16bit") = true,
      py::arg("dtype_16bit") = "float16", py::arg("resume") = true, py::arg("overwrite") = false,
      py::arg("finetune_epochs") = 0, py::arg("finetune_lr") = 1e-3, py::arg("finetune_windows") = -1, py::arg("finetune_bias") = false,
      py::arg("finetune_stage_gains") = false, py::arg("finetune_extra_only") = false,
      py::arg("progress") = py::none(),
      "Quantizes a GGUF file or Hugging Face directory into a GLQ checkpoint directory; returns the report.");
}

}  // namespace glq::python
