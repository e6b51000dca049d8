// Maps a published run to (ModelSpec, GPU, Plan) and converts its measured quantity to a step time with the
// source's own FLOP formula. The rules are listed in published_runs.hpp; each default applied becomes an assumption.
#include "sim/analysis/published_runs.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>

namespace cuboid::sim::analysis {

namespace {

// Dense peaks the sources divide by (scenarios/validation/README.md "GPU peak numbers used by the sources").
constexpr double A100_PEAK = 312e12;
constexpr double H100_BF16_PEAK = 989e12;
constexpr double H100_FP8_PEAK = 1979e12;
// Jean Zay (BLOOM): 4 Omni-Path links per node (validation README), 100 Gb/s each (Intel OPA 100 series), 8 GPUs.
// Measured: BigScience's all_reduce_bench on 4 A100 nodes (bigscience-workshop/bigscience experiments/bandwidth/
// all_reduce_bench-a100-n4.txt @358e3c8f, NCCL 2.10.3, the version of BLOOM's pt-1.11): 4 GB fp32 in 1.519 s, busbw
// 40.81 Gbps = 5.10 GB/s, with the communicator's channels on one OPA link (the 16-rank run's log: "2 coll channels"
// both "via NET/IB/1"; the 16- and 32-rank runs give the same busbw). So one link achieves 5.10 GB/s, 41 % of its
// 12.5 GB/s wire rate; per GPU (4 links per 8 GPUs) 2.55 GB/s achieved. This measured rate replaces the spec rate,
// with no efficiency factor on top (MappedRun::nic_bw_measured).
constexpr double BLOOM_NIC_BYTES_PER_S = 4.0 * 40.81e9 / 8.0 / 8.0;

// SC21 Table 1 as its authors launched it: NVIDIA/Megatron-LM examples/sc21/run_table_1.sh @79a3bb6 ("the scripts
// used to produce the results in the Megatron paper ... Table 1 showing weak-scaling throughput", examples/sc21/
// README.md). Per model size: micro-batch (MBS), layers per virtual stage (--num-layers-per-virtual-pipeline-stage,
// 0 = not set: plain 1F1B) and DDP implementation (torch: PyTorch DDP, which all-reduces bucketed gradients behind
// the backward; local: Megatron's own, which all-reduces after it). Matched on layers, hidden size, tp and pp.
struct Sc21Launch {
  std::int64_t layers, hidden;
  int tp, pp;
  std::int64_t micro_batch;
  int layers_per_virtual_stage;
  bool torch_ddp;
};
constexpr Sc21Launch SC21_TABLE1_LAUNCH[] = {
    {24, 2304, 1, 1, 16, 0, true},   {30, 3072, 2, 1, 16, 0, true},    {36, 4096, 4, 1, 16, 0, true},
    {40, 6144, 8, 1, 8, 0, true},    {48, 8192, 8, 2, 4, 0, false},    {60, 10240, 8, 4, 2, 5, false},
    {80, 12288, 8, 8, 2, 5, false},  {96, 16384, 8, 16, 1, 3, false},  {105, 20480, 8, 35, 1, 1, false},
    {128, 25600, 8, 64, 1, 0, false}};
// PyTorch DDP's default bucket_cap_mb = 25 (torch.nn.parallel.DistributedDataParallel): 12.5M fp16 gradients, which
// Plan::grad_bucket_bytes counts in fp32 main-grad bytes (4 B per parameter).
constexpr double TORCH_DDP_BUCKET_PARAMS = 25e6 / 2.0;

const Sc21Launch* sc21_launch(const PublishedRun& run, std::int64_t layers, std::int64_t hidden, int tp, int pp) {
  if (run.source_kind != "sc21" || run.id.find("-t1-") == std::string::npos) {
    return nullptr;
  }
  for (const Sc21Launch& launch : SC21_TABLE1_LAUNCH) {
    if (launch.layers == layers && launch.hidden == hidden && launch.tp == tp && launch.pp == pp) {
      return &launch;
    }
  }
  return nullptr;
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return text;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::int64_t as_int(double value) { return static_cast<std::int64_t>(std::llround(value)); }

// Architecture family from the model name: decides MLP, norm, bias, positions, tying and the default vocabulary.
struct Family {
  std::string name;
  bool gated = false;
  model::NormKind norm = model::NormKind::LayerNorm;
  bool bias = true;
  bool learned_positions = true;
  bool tied = true;
  double vocab = 51200.0;
};

Family family_of(const std::string& model_name) {
  const std::string name = lower(model_name);
  if (contains(name, "llama")) {
    // Llama 2 / 3: SwiGLU, RMSNorm, no biases, RoPE, untied output layer (Hugging Face configs in shared/specs).
    const bool llama2 = contains(name, "llama2") || contains(name, "llama-2") || contains(name, "llama 2");
    return {"llama", true, model::NormKind::RmsNorm, false, false, false, llama2 ? 32000.0 : 128256.0};
  }
  if (contains(name, "bloom")) {
    // BLOOM: GeLU MLP, LayerNorm, biases, ALiBi (no position table), tied embeddings, vocab 250880 padded.
    return {"bloom", false, model::NormKind::LayerNorm, true, false, true, 250880.0};
  }
  if (contains(name, "nemotron")) {
    // Nemotron-4: squared-ReLU MLP (not gated), LayerNorm, no biases, RoPE, untied, 256k vocabulary.
    return {"nemotron", false, model::NormKind::LayerNorm, false, false, false, 256000.0};
  }
  // GPT-3 style (Megatron, NeMo GPT3): GeLU MLP, LayerNorm, biases, learned positions, tied embeddings.
  return {"gpt", false, model::NormKind::LayerNorm, true, true, true, 51200.0};
}

model::Precision precision_of(const std::string& text, std::vector<std::string>& assumptions) {
  const std::string value = lower(text);
  if (value.rfind("fp8", 0) == 0) {
    return model::Precision::Fp8;
  }
  if (value.rfind("bf16", 0) == 0) {
    return model::Precision::Bf16;
  }
  if (value.rfind("mixed-16bit", 0) == 0 || value.rfind("fp16", 0) == 0) {
    return model::Precision::Fp16;
  }
  assumptions.emplace_back(fmt::format("precision '{}' -> bf16", text.empty() ? "missing" : text));
  return model::Precision::Bf16;
}

} // namespace

MappedRun map_run(const PublishedRun& run) {
  MappedRun mapped;
  auto& notes = mapped.assumptions;
  auto stop = [&](RunStatus status, std::string reason) {
    mapped.status = status;
    mapped.reason = std::move(reason);
    return mapped;
  };
  // ---- GPU
  if (contains(run.gpu_text, "A100")) {
    // A100 rows are the 80 GB part unless the text says 40 GB (validation README "gpu").
    const std::string gpu = lower(run.gpu_text);
    mapped.gpu = contains(gpu, "40gb") || contains(gpu, "40 gb") || contains(gpu, "-40g") ? "a100-40gb" : "a100-80gb";
  } else if (contains(run.gpu_text, "GB200")) {
    mapped.gpu = "gb200";
  } else if (contains(run.gpu_text, "B200")) {
    mapped.gpu = "b200";
  } else if (contains(run.gpu_text, "H200")) {
    mapped.gpu = "h200";
  } else if (contains(run.gpu_text, "H100")) {
    mapped.gpu = "h100-sxm";
  } else {
    return stop(RunStatus::Unsupported, fmt::format("GPU '{}' has no catalog entry", run.gpu_text));
  }
  // ---- model
  if (!run.num_layers || !run.hidden_size || !run.num_heads || !run.seq_len) {
    return stop(RunStatus::Skipped, "architecture incomplete (layers, hidden, heads or seq missing)");
  }
  const Family family = family_of(run.model_name);
  model::ModelSpec& spec = mapped.model;
  spec.name = run.model_name;
  spec.source = run.source;
  spec.num_layers = as_int(*run.num_layers);
  spec.hidden_size = as_int(*run.hidden_size);
  spec.num_attention_heads = as_int(*run.num_heads);
  spec.num_query_groups = run.num_kv_heads ? as_int(*run.num_kv_heads) : spec.num_attention_heads;
  spec.head_dim = spec.hidden_size / std::max<std::int64_t>(1, spec.num_attention_heads);
  spec.seq_length = as_int(*run.seq_len);
  spec.ffn_hidden_size = run.ffn_hidden_size ? as_int(*run.ffn_hidden_size) : 4 * spec.hidden_size;
  if (!run.ffn_hidden_size) {
    notes.emplace_back("ffn_hidden_size not given -> 4h");
  }
  spec.vocab_size = as_int(run.vocab_size.value_or(family.vocab));
  if (!run.vocab_size) {
    notes.emplace_back(fmt::format("vocab not given -> {} ({} tokenizer)", spec.vocab_size, family.name));
  }
  spec.gated_mlp = family.gated;
  spec.norm = family.norm;
  spec.linear_bias = family.bias;
  spec.learned_position_embedding = family.learned_positions;
  spec.tied_embeddings = family.tied;
  // ---- layout
  if (!run.tp || !run.pp) {
    return stop(RunStatus::Skipped, "no layout: tp/pp not given (source states only the model-parallel size)");
  }
  if (!run.num_gpus || !run.global_batch) {
    return stop(RunStatus::Skipped, "num_gpus or global_batch not given");
  }
  model::Plan& plan = mapped.plan;
  plan.tp = static_cast<int>(as_int(*run.tp));
  plan.pp = static_cast<int>(as_int(*run.pp));
  // Context parallelism (Megatron --context-parallel-size); an empty cell is cp = 1.
  plan.cp = run.cp ? static_cast<int>(as_int(*run.cp)) : 1;
  mapped.num_gpus = static_cast<int>(as_int(*run.num_gpus));
  if (plan.cp <= 0) {
    return stop(RunStatus::Infeasible, fmt::format("cp = {} is not a positive size", plan.cp));
  }
  if (plan.tp <= 0 || plan.pp <= 0 || mapped.num_gpus % (plan.tp * plan.pp * plan.cp) != 0) {
    return stop(RunStatus::Infeasible,
                plan.cp == 1 ? fmt::format("tp*pp = {} does not divide {} GPUs", plan.tp * plan.pp, mapped.num_gpus)
                             : fmt::format("tp*pp*cp = {} does not divide {} GPUs", plan.tp * plan.pp * plan.cp,
                                           mapped.num_gpus));
  }
  plan.dp = run.dp ? static_cast<int>(as_int(*run.dp)) : mapped.num_gpus / (plan.tp * plan.pp * plan.cp);
  plan.micro_batch_size = run.micro_batch ? as_int(*run.micro_batch) : 1;
  const Sc21Launch* launch = sc21_launch(run, spec.num_layers, spec.hidden_size, plan.tp, plan.pp);
  if (!run.micro_batch && launch) {
    plan.micro_batch_size = launch->micro_batch;
    notes.emplace_back(fmt::format("micro batch not given -> {} (authors' examples/sc21/run_table_1.sh)",
                                   launch->micro_batch));
  } else if (!run.micro_batch) {
    notes.emplace_back("micro batch not given -> 1");
  }
  plan.global_batch_size = as_int(*run.global_batch);
  plan.vp = run.vp ? std::max(1, static_cast<int>(as_int(*run.vp))) : 1;
  if (!run.vp && launch) {
    const std::int64_t per_stage = spec.num_layers / plan.pp;
    plan.vp = launch->layers_per_virtual_stage > 0 && per_stage % launch->layers_per_virtual_stage == 0
                  ? static_cast<int>(per_stage / launch->layers_per_virtual_stage)
                  : 1;
    if (plan.pp > 1) {
      notes.emplace_back(fmt::format("interleaving not given -> vp={} (run_table_1.sh: {})", plan.vp,
                                     launch->layers_per_virtual_stage > 0
                                         ? fmt::format("{} layers per virtual stage", launch->layers_per_virtual_stage)
                                         : std::string("no virtual stages")));
    }
  }
  // SC21 Table 1 ran the interleaved schedule (paper section 5.1, kept in notes) without stating the chunk count:
  // take the least interleaving the stage allows (smallest vp > 1 dividing the layers per stage), which keeps the
  // bubble an upper bound of the paper's; plain 1F1B where no such vp exists.
  if (!run.vp && !launch && plan.pp > 1 && contains(lower(run.notes), "interleaved")) {
    const std::int64_t per_stage = spec.num_layers % plan.pp == 0 ? spec.num_layers / plan.pp : 0;
    for (int chunks = 2; per_stage > 1 && chunks <= per_stage; ++chunks) {
      if (per_stage % chunks == 0) {
        plan.vp = chunks;
        break;
      }
    }
    notes.emplace_back(plan.vp > 1 ? fmt::format("interleaved schedule without a stated chunk count -> vp={} (least "
                                                 "interleaving of {} layers per stage)",
                                                 plan.vp, per_stage)
                                   : std::string("interleaved schedule without a stated chunk count -> plain 1F1B"));
  }
  plan.schedule = plan.vp > 1 ? model::Schedule::Interleaved : model::Schedule::OneFOneB;
  // ---- memory savers and precision
  const std::string flops_def = run.note("flops_def");
  const std::string recompute = lower(run.recompute);
  mapped.recompute_stated = !recompute.empty();
  if (recompute == "full") {
    plan.recompute = model::Recompute::Full;
  } else if (recompute.rfind("selective+microbatch", 0) == 0) {
    // Korthikanti et al. 2022 Appendix C: recompute only some micro-batches' activations. Not in the schedule model.
    return stop(RunStatus::Unsupported, fmt::format("recompute '{}': micro-batch-level recompute is not modelled",
                                                    run.recompute));
  } else if (recompute.rfind("selective", 0) == 0) {
    plan.recompute = model::Recompute::Selective;
  } else if (recompute.empty() && flops_def.rfind("hw_incl_recompute", 0) == 0) {
    plan.recompute = model::Recompute::Full;
    mapped.recompute_stated = true;
    notes.emplace_back("recompute not stated -> full (flops_def=hw_incl_recompute counts the recompute forward)");
  } else {
    plan.recompute = model::Recompute::None;
  }
  const bool modern = run.source_kind == "megatron-lm-readme" || run.source_kind == "nemo" ||
                      run.source_kind == "dgxc" || run.source_kind == "megatron-bridge";
  if (run.sequence_parallel == "yes" || run.sequence_parallel == "no") {
    plan.sequence_parallel = run.sequence_parallel == "yes" && plan.tp > 1;
  } else {
    plan.sequence_parallel = modern && plan.tp > 1;
    notes.emplace_back(fmt::format("sequence parallel not stated -> {}", plan.sequence_parallel ? "yes" : "no"));
  }
  // Megatron-LM's distributed optimizer came after SC21 and Korthikanti et al. 2022 (neither uses it).
  plan.distributed_optimizer = run.source_kind != "sc21" && run.source_kind != "korthikanti22";
  // SC21-era Megatron's local DDP and Megatron-DeepSpeed (BLOOM) reduce gradients after the backward pass; SC21's
  // pp = 1 rows ran PyTorch DDP (run_table_1.sh DDP=torch), which overlaps its 25 MB buckets with the backward.
  plan.overlap_grad_reduce = modern || (launch && launch->torch_ddp);
  if (launch && launch->torch_ddp) {
    plan.grad_bucket_bytes = TORCH_DDP_BUCKET_PARAMS * 4.0;
    notes.emplace_back("PyTorch DDP (run_table_1.sh DDP=torch): fp16 gradients all-reduced in 25 MB buckets behind "
                       "the backward");
  }
  // SC21-era Megatron-LM and Megatron-DeepSpeed (BLOOM) block the compute stream on pipeline sends/receives
  // (Plan::blocking_p2p cites the code); Megatron-Core's 1F1B runs them on a separate stream.
  plan.blocking_p2p = !modern;
  // Megatron-LM scatters/gathers pipeline tensors over TP (SC21 section 4.1, default on); so does DeepSpeed's
  // PipelineEngine with TP > 1 (runtime/pipe/engine.py @37011a92: is_pipe_partitioned = is_model_parallel, each TP
  // rank sends a 1/tp PartitionedTensor and the receiver all-gathers it with .full()).
  plan.p2p_scatter_gather = true;
  if (plan.pp > 1 && !modern) {
    notes.emplace_back(fmt::format("pipeline sends block the compute stream ({}){}",
                                   run.source_kind == "bloom" ? "DeepSpeed PipelineEngine" : "SC21-era Megatron-LM",
                                   "; scatter/gather: 1/tp of the activation per TP rank"));
  }
  // Megatron-Core / NeMo overlap features: the Megatron-LM README states --overlap-param-gather --tp-comm-overlap
  // for its table; the NeMo 24.07 and dgxc v25.02 recipes run Megatron-Core with the same options (assumed, their
  // tables do not restate them). Userbuffers TP overlap needs sequence parallelism.
  plan.overlap_param_gather = modern;
  plan.tp_comm_overlap = modern && plan.sequence_parallel;
  // Megatron-LM from 2022 (Korthikanti et al. section 6.2) and Megatron-Core reduce the input gradient of a
  // column-parallel linear behind its weight-gradient GEMM; SC21-era Megatron-LM and Megatron-DeepSpeed did not.
  plan.async_tp_grad_reduce = modern || run.source_kind == "korthikanti22";
  if (modern && run.source_kind != "megatron-lm-readme") {
    notes.emplace_back(fmt::format("overlap not stated -> --overlap-param-gather{} (Megatron-Core recipe defaults)",
                                   plan.tp_comm_overlap ? " --tp-comm-overlap" : ""));
  }
  plan.precision = precision_of(run.note("precision"), notes);
  plan.flash_attention = modern;
  if (!modern) {
    notes.emplace_back("unfused attention (source predates FlashAttention)");
  }
  if (run.source_kind == "bloom") {
    // Megatron-DeepSpeed's BF16 optimizer (notes: ZeRO-1-equivalent sharding): fp32 gradients all-reduced over DP,
    // then each rank updates its shard and all-gathers the bf16 parameters (DeepSpeed runtime/engine.py
    // allreduce_gradients, runtime/bf16_optimizer.py).
    plan.all_reduce_sharded_grads = true;
    notes.emplace_back("BF16 optimizer: fp32 gradient buffer all-reduced over DP in bf16 (DeepSpeed communication "
                       "dtype), sharded update, bf16 parameter all-gather; tied embedding grads in fp32");
    mapped.nic_bw_bytes_per_s = BLOOM_NIC_BYTES_PER_S;
    mapped.nic_bw_measured = true;
    notes.emplace_back("network: 4 Omni-Path links per 8-GPU node at the 40.8 Gb/s each that BigScience's "
                       "all_reduce_bench measured (NCCL 2.10.3) = 2.55 GB/s per GPU, no efficiency factor");
  }
  // Both NVIDIA recipe families reduce gradients in bf16 and recompute no whole layers:
  // * NeMo 24.07's H100 FP8 runs come from NeMo-Framework-Launcher: every examples/training/<model>/h100/*fp8*.sh
  //   launch script adds +training.model.optim.grad_sync_dtype=bf16 (5b, 20b, 175b, llama2 7b/13b/70b, llama3
  //   8b/70b), and conf/training/nemotron/nemotron_340b.yaml sets optim.grad_sync_dtype: bf16 itself (NeMo maps it to
  //   Megatron-Core's grad_reduce_in_fp32 = false, megatron_gpt_model.py). Their model yamls set
  //   activations_checkpoint_granularity null, or selective with activations_checkpoint_num_layers 0 (GPT-3 20B /
  //   175B): no recipe recomputes whole layers.
  // * Megatron-Bridge scripts/performance (configs/llama3/llama3_llm_pretrain.py, configs/llama31/
  //   llama31_llm_pretrain.py @0a0cb290): grad_reduce_in_fp32 = False; the H100 presets set no recompute. The
  //   table's FSDP column: 1 = Megatron FSDP, 0 = distributed optimizer.
  if (run.source_kind == "nemo" || run.source_kind == "megatron-bridge") {
    plan.grad_reduce_in_bf16 = plan.precision != model::Precision::Fp16;
    mapped.full_recompute_allowed = false;
    notes.emplace_back(run.source_kind == "nemo"
                           ? "NeMo launcher recipe: grad_sync_dtype bf16 (--grad-reduce-in-bf16); no full-layer recompute"
                           : "Megatron-Bridge perf scripts: grad_reduce_in_fp32=False (--grad-reduce-in-bf16); no "
                             "full-layer recompute");
    if (run.source_kind == "megatron-bridge" && run.note("FSDP").rfind('1', 0) == 0) {
      // cuboid's ZeRO-3 reduce-scatters fp32 gradients after every micro-batch (DeepSpeed's way); Megatron FSDP with
      // this recipe reduces bf16 ones with its own buffering, which is not modelled.
      return stop(RunStatus::Unsupported, "FSDP=1: Megatron FSDP with bf16 gradient reduction is not modelled "
                                          "(cuboid's ZeRO-3 reduce-scatters fp32 per micro-batch)");
    }
  }
  if (plan.precision == model::Precision::Fp8 && mapped.gpu.rfind("a100", 0) == 0) {
    return stop(RunStatus::Unsupported, "FP8 on A100");
  }
  // Megatron-Core --account-for-embedding-in-pipeline-split / --account-for-loss-in-pipeline-split, where the row's
  // recipe sets them (notes key = True; e.g. Megatron-Bridge llama31_405b_pretrain_config).
  plan.account_for_embedding_in_pipeline_split =
      run.note("account_for_embedding_in_pipeline_split").rfind("True", 0) == 0;
  plan.account_for_loss_in_pipeline_split = run.note("account_for_loss_in_pipeline_split").rfind("True", 0) == 0;
  if (plan.accounts_in_pipeline_split()) {
    notes.emplace_back(fmt::format("recipe counts {} as a pipeline-stage layer",
                                   plan.account_for_embedding_in_pipeline_split &&
                                           plan.account_for_loss_in_pipeline_split
                                       ? "the embedding and the loss each"
                                       : (plan.account_for_embedding_in_pipeline_split ? "the embedding"
                                                                                        : "the loss")));
  }
  // Megatron-DeepSpeed's pp-partition-method type:transformer|embedding counts the two embeddings as stage layers.
  // Applied where the notes say so, or where the layers alone cannot be split evenly but layers + 2 can (the only
  // even layout such a run can have, e.g. BLOOM's ramp-up rows: 70 layers on pp = 12).
  const bool stated = contains(run.notes, "embedding counted as a PP stage layer");
  if (!plan.accounts_in_pipeline_split() && plan.pp > 1 && (stated || spec.num_layers % plan.pp != 0) &&
      (spec.num_layers + 2) % plan.pp == 0) {
    plan.first_stage_layers = static_cast<int>((spec.num_layers + 2) / plan.pp - 1);
    plan.last_stage_layers = plan.first_stage_layers;
    notes.emplace_back(fmt::format("embedding counted as a stage layer -> first/last stages hold {} layers",
                                   plan.first_stage_layers));
  }
  return mapped;
}

double hw_flops_incl_recompute(double batch, double seq, double layers, double hidden, double vocab) {
  return 96.0 * batch * seq * layers * hidden * hidden *
         (1.0 + seq / (6.0 * hidden) + vocab / (16.0 * layers * hidden));
}

double model_flops_per_step(double batch, double seq, double layers, double hidden, double vocab) {
  return 72.0 * batch * seq * layers * hidden * hidden *
         (1.0 + seq / (6.0 * hidden) + vocab / (12.0 * layers * hidden));
}

std::optional<MeasuredStep> measured_step_time(const PublishedRun& run, const MappedRun& mapped) {
  const auto& spec = mapped.model;
  const double batch = static_cast<double>(mapped.plan.global_batch_size);
  const double seq = static_cast<double>(spec.seq_length);
  const double gpus = static_cast<double>(mapped.num_gpus);
  const double layers = static_cast<double>(spec.num_layers);
  const double hidden = static_cast<double>(spec.hidden_size);
  const double vocab = static_cast<double>(spec.vocab_size);
  if (run.measured_step_time_s && *run.measured_step_time_s > 0.0) {
    return MeasuredStep{*run.measured_step_time_s, "measured_step_time_s"};
  }
  if (run.measured_tokens_per_s_per_gpu && *run.measured_tokens_per_s_per_gpu > 0.0) {
    return MeasuredStep{batch * seq / (*run.measured_tokens_per_s_per_gpu * gpus),
                        "gbs*seq / (tokens/s/GPU * GPUs)"};
  }
  const std::string flops_def = run.note("flops_def");
  if (run.measured_tflops_per_gpu && *run.measured_tflops_per_gpu > 0.0) {
    const bool hardware = flops_def.rfind("hw_incl_recompute", 0) == 0;
    const double flops = hardware ? hw_flops_incl_recompute(batch, seq, layers, hidden, vocab)
                                  : model_flops_per_step(batch, seq, layers, hidden, vocab);
    return MeasuredStep{flops / (*run.measured_tflops_per_gpu * 1e12 * gpus),
                        hardware ? "TFLOP/s with SC21 eq. 3 (96Bslh^2(1+s/6h+V/16lh))"
                                 : "TFLOP/s with model FLOPs (72Bslh^2(1+s/6h+V/12lh))"};
  }
  // The sources' MFU peaks are documented for A100, H100 and H200 (H100 compute) only; a Blackwell row needs a
  // step time, tokens/s or TFLOP/s.
  const bool peak_known = mapped.gpu.rfind("a100", 0) == 0 || mapped.gpu == "h100-sxm" || mapped.gpu == "h200";
  if (run.measured_mfu && *run.measured_mfu > 0.0 && peak_known) {
    const double peak = mapped.gpu.rfind("a100", 0) == 0                  ? A100_PEAK
                        : mapped.plan.precision == model::Precision::Fp8 ? H100_FP8_PEAK
                                                                         : H100_BF16_PEAK;
    return MeasuredStep{model_flops_per_step(batch, seq, layers, hidden, vocab) / (*run.measured_mfu * peak * gpus),
                        fmt::format("MFU x {:.0f} TF with model FLOPs", peak / 1e12)};
  }
  return std::nullopt;
}

} // namespace cuboid::sim::analysis
