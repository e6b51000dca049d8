// Published training runs (scenarios/validation/published_runs.csv): a strict CSV reader, the mapping of each row
// to (ModelSpec, GPU, Plan) with every default written down as an assumption, and the conversion of the measured
// quantity to a step time with the source's own FLOP formula. Used by validation.hpp (`cuboid validate`).
#pragma once

#include "model/model_spec.hpp"
#include "model/plan.hpp"

#include <optional>
#include <string>
#include <vector>

namespace cuboid::sim::analysis {

/// A CSV file read strictly (RFC 4180: quoted fields with commas, doubled quotes and newlines). Errors name the
/// file, line and column: "runs.csv:12:7: stray '\"' inside an unquoted field".
struct CsvTable {
  std::string path;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<int> row_lines; // first line of each row in the file (1-based)
};
CsvTable read_csv_table(const std::string& path);

/// One row of published_runs.csv, typed. Empty cells are std::nullopt / "".
struct PublishedRun {
  std::string where;        // "file:line" for messages
  std::string id;
  std::string source;       // full citation text
  std::string source_kind;  // "sc21", "megatron-lm-readme", "bloom", "nemo", "dgxc", held-out: "megatron-bridge",
                            // "korthikanti22", "mt-nlg"; else "other" (published_runs.cpp SOURCE_FAMILIES)
  std::string model_name;
  std::string gpu_text;
  std::string recompute;    // full, selective, selective+microbatch-level, none, ""
  std::string sequence_parallel; // yes, no, ""
  std::string notes;
  std::optional<double> num_layers, hidden_size, num_heads, num_kv_heads, ffn_hidden_size, vocab_size, seq_len;
  std::optional<double> num_gpus, tp, pp, dp, cp, vp, micro_batch, global_batch;
  std::optional<double> measured_tflops_per_gpu, measured_mfu, measured_step_time_s, measured_tokens_per_s_per_gpu,
      measured_peak_mem_gb;

  /// Value of "key=" in notes up to ';' ("" if absent), e.g. note("precision") == "BF16".
  [[nodiscard]] std::string note(const std::string& key) const;
};

/// Reads and types every row; throws InputError naming file, line and column for malformed cells or a missing
/// column.
std::vector<PublishedRun> read_published_runs(const std::string& path);

enum class RunStatus { Ok, Skipped, Unsupported, Infeasible };
std::string to_string(RunStatus status);

/// A row mapped to cuboid's inputs. status != Ok carries the reason and leaves the specs partly filled.
struct MappedRun {
  RunStatus status = RunStatus::Ok;
  std::string reason;
  model::ModelSpec model;
  std::string gpu;          // catalog name: "a100-80gb", "a100-40gb", "h100-sxm", "h200", "b200", "gb200"
  int num_gpus = 0;
  model::Plan plan;
  bool recompute_stated = false; // false: the caller may pick the least recompute that fits memory
  bool full_recompute_allowed = true; // false: the source's recipes never recompute whole layers (NeMo 24.07)
  double nic_bw_bytes_per_s = 0.0; // > 0: the source's network differs from the catalog system (BLOOM: Omni-Path)
  bool nic_bw_measured = false;    // nic_bw_bytes_per_s is an achieved rate: the profile's nic_efficiency is not applied
  std::vector<std::string> assumptions;
};

/// Mapping rules (each applied default is added to `assumptions`):
///  gpu text: "A100" -> a100-80gb (README: A100 rows are 80 GB), "H100" -> h100-sxm, "H200" -> h200;
///  model: kv heads empty -> = heads (MHA); ffn empty -> 4h; gated MLP (SwiGLU) and RMSNorm / no bias / RoPE for
///  Llama; GPT, BLOOM and Nemotron are not gated (Nemotron-4 uses squared ReLU); seq from the row; vocab empty ->
///  the family's tokenizer (BLOOM 250880 padded, Llama-2 32000, Llama-3 128256, Nemotron 256000, GPT 51200);
///  plan: tp/pp empty -> Skipped ("no layout"); cp empty -> 1; dp empty -> gpus / (tp*pp*cp); mbs empty -> 1,
///  except SC21 Table 1, whose micro-batch, virtual stages and DDP come from the authors' launch script
///  (examples/sc21/run_table_1.sh, SC21_TABLE1_LAUNCH in the .cpp); vp > 1 -> interleaved 1F1B, else 1F1B;
///  NeMo 24.07: the launcher recipes' grad_sync_dtype bf16 and no full-layer recompute;
///  recompute: the row's value; empty with flops_def=hw_incl_recompute -> full (eq. 3 counts the extra forward);
///  otherwise not stated (recompute_stated = false; default none);
///  sequence parallel: the row's value; empty -> yes when tp > 1 for Megatron-Core/NeMo-era sources (megatron-lm-
///  readme, nemo, dgxc: --tp-comm-overlap needs it), no for SC21 and BLOOM (it postdates them);
///  distributed optimizer: yes except SC21 (BLOOM: ZeRO-1 per notes);
///  precision from notes: FP8* -> fp8, BF16 -> bf16, mixed-16bit -> fp16, not stated -> bf16;
///  BLOOM "embedding counted as a PP stage layer": first/last stages hold (L+2)/pp - 1 layers when that divides;
///  attention: FlashAttention (arXiv:2205.14135, May 2022) postdates SC21 and BLOOM's Megatron-DeepSpeed (fused
///  scale-mask-softmax), so those use the unfused path (Plan::flash_attention = false); the others are fused;
///  network: BLOOM's Jean Zay nodes have 4 Omni-Path links (README), at the 40.8 Gb/s each that BigScience measured
///  with NCCL 2.10.3 = 2.55 GB/s per GPU, used as an achieved rate (nic_bw_measured).
MappedRun map_run(const PublishedRun& run);

/// SC21 eq. 3 (also BLOOM's "4*2 coefficient"): hardware FLOPs per step including the recompute forward,
/// F = 96 B s l h^2 (1 + s/(6h) + V/(16 l h)).
double hw_flops_incl_recompute(double batch, double seq, double layers, double hidden, double vocab);
/// Model FLOPs per step without recompute (PaLM-style MFU, Korthikanti et al. 2022):
/// F = 72 B s l h^2 (1 + s/(6h) + V/(12 l h)).
double model_flops_per_step(double batch, double seq, double layers, double hidden, double vocab);

struct MeasuredStep {
  double step_time_s = 0.0;
  std::string basis; // which column and formula gave it
};
/// The measured step time: measured_step_time_s if present; else tokens/s/GPU (step = gbs*seq / (tok/s/GPU * gpus));
/// else TFLOP/s/GPU with the row's flops_def formula; else MFU x the source's peak with the model formula.
/// std::nullopt when the row gives none of them.
std::optional<MeasuredStep> measured_step_time(const PublishedRun& run, const MappedRun& mapped);

} // namespace cuboid::sim::analysis
