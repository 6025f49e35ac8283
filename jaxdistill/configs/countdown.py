"""Countdown presets: `--config countdown.py[:preset]` (or configs/countdown.py in a checkout).

tiny (default, CPU) and smoke use a small Qwen2-architecture model with the character
tokenizer; qwen2.5-0.5b / qwen2.5-1.5b need --config.model.path to a local HF directory and
default to the reference's settings (`qwen` below). Any field can be overridden on the command
line (--config.search.num_agents=8); unknown fields are errors.
"""

import difflib

import ml_collections
from absl import app

from jaxdistill.configs.rules import (COUNT, POSITIVE, PROBABILITY, RATE, TEMPERATURE, Bool,
                                    Choice, Declared, Float, Int, Text, registry)
from jaxdistill.errors import UsageError


class OverrideError(UsageError, app.UsageError):
  """An override the config cannot take, in one line: `jaxdistill.main` prints it as its
  other usage errors, and the scripts' `--set` (absl's app.run) with their short usage."""


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """`path.to.field=value` strings (as after --config.) applied to `config` in place, the value
  cast to the field's type (booleans from true/false/1/0). An unknown field, a value the
  field's type cannot take or a string without '=' raises OverrideError."""
  for item in overrides:
    if "=" not in item:
      raise OverrideError(f"override {item!r} is not of the form field=value")
    key, value = item.split("=", 1)
    names = key.split(".")
    node = config
    for depth, name in enumerate(names):
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(name, known, n=1)
        raise OverrideError(f"override {item!r}: unknown config field "
                            f"{'.'.join(names[:depth + 1])}"
                            + (f" (did you mean {close[0]}?)" if close else ""))
      parent, node = node, node[name]
    field = names[-1]
    kind = parent.get_type(field)  # a field left None (placeholder) has its type too
    if kind is bool:
      if value.lower() not in ("1", "true", "0", "false"):
        raise OverrideError(f"override {item!r}: {key} is true or false")
      parent[field] = value.lower() in ("1", "true")
      continue
    try:
      parent[field] = kind(value)
    except (TypeError, ValueError):
      raise OverrideError(f"override {item!r}: {key} takes {kind.__name__} values") from None
  return config


def declarations() -> Declared:
  """Every setting, declared once: `c.section.field = default, rule  # what it means`. The
  defaults are the `tiny` preset's values (the other presets change some); `validation`
  checks every value against its rule."""
  c = Declared()
  c.preset = "tiny", Choice(lambda: tuple(PRESETS))
  c.seed = 0, COUNT
  # mcts_distill | cispo | best_of_n | deepsearch (jaxdistill/methods/)
  c.algo = "mcts_distill", registry("jaxdistill.methods", "METHODS")
  # persistent compilation cache: '' -> $XDG_CACHE_HOME (or ~/.cache)/jaxdistill/xla,
  # 'none' -> off, else a directory (e.g. inside the workdir)
  c.compile_cache_dir = "", Text()

  _model(c)
  _sft(c)
  _task(c)
  _reward(c)
  _search(c)
  _deepsearch(c)
  _rollout(c)
  _learner(c)
  _train(c)
  _parallel(c)
  _eval(c)
  return c


def base(declared: Declared | None = None) -> ml_collections.ConfigDict:
  """Every setting at its default (`declared`, else `declarations()`), and each method's
  learner."""
  c = (declarations() if declared is None else declared).config()
  # the learner each method trains with where a learner field is None: its own entry, else
  # `default`. Set a method's value here (--config.method_learner.deepsearch.minibatches=4)
  # or for every method in learner (which wins)
  c.method_learner = ml_collections.ConfigDict()
  c.method_learner.default = ml_collections.ConfigDict(dict(
      policy_loss="cispo", ppo_eps_high=0.0, dual_clip=0.0, loss_aggregation="sequence",
      value_coef=1.0, kl_coef=0.05,
      learning_rate=1e-5,  # the best of 1e-5, 3e-5, 1e-4 on validation (docs/results.md)
      weight_decay=0.0, clip_norm=0.1, minibatches=1))
  # DeepSearch's published learner (../DEEPSEARCH.md in docs/design.md): PPO with clip-higher
  # 0.2 / 0.28 and dual clip 10, token-mean, no KL, no value loss (its advantages come from
  # the tree), AdamW weight decay 0.1, gradient clip 1.0, each batch in 8 minibatches so the
  # ratio leaves 1 and the clip acts. Published rate 1e-6 at 1.5B (the qwen presets); the
  # tiny model's: 1e-5, the validation pick of 3e-6, 1e-5, 3e-5 for the recipe with its
  # default advantage (the ds_tree_grpo row, docs/results.md)
  c.method_learner.deepsearch = ml_collections.ConfigDict(dict(
      policy_loss="ppo", ppo_eps_high=0.28, dual_clip=10.0, loss_aggregation="token",
      value_coef=0.0, kl_coef=0.0, learning_rate=1e-5, weight_decay=0.1, clip_norm=1.0,
      minibatches=8))
  return c


def _model(c: Declared) -> None:
  c.model = Declared()
  c.model.path = "", Text()  # local Hugging Face directory (qwen presets); '' -> built locally
  # compute: activations, matmuls, KV cache, sampling and search
  c.model.dtype = "float32", Choice(("float32", "bfloat16", "float16"))
  # parameters and optimizer state (master weights): fp32, or Adam's small steps round away
  c.model.param_dtype = "float32", Choice(("float32", "bfloat16", "float16"))
  # matmul precision: auto (HIGHEST for float32, so fp32 is fp32 on GPUs too; native for
  # bfloat16) | highest | tensorfloat32 (faster fp32 on GPUs) | default
  c.model.precision = "auto", registry("jaxdistill.models.qwen2", "PRECISIONS")
  c.model.hidden_size = 128, POSITIVE  # architecture of the locally built model (tiny / smoke)
  c.model.intermediate_size = 384, POSITIVE
  c.model.num_hidden_layers = 4, POSITIVE
  c.model.num_attention_heads = 4, POSITIVE
  c.model.num_key_value_heads = 2, POSITIVE
  c.model.rope_theta = 1e6, RATE

def _sft(c: Declared) -> None:
  c.sft = Declared()  # warm start of the locally built model
  # calibrated so the base model solves a minority of held-out problems (mean@16 in 5-25%,
  # like the instruct model the reference started from; tiny4's few percent, as the
  # reference's): docs/results.md, "The reference's regime on a CPU"
  c.sft.steps = 400, COUNT  # 0: no warm start (random init)
  c.sft.batch_size = 64, POSITIVE
  c.sft.learning_rate = 2e-3, RATE
  c.sft.warmup_steps = 20, COUNT
  # compact prompt + solution + EOS: at most 82 tokens (3 numbers)
  c.sft.sequence_length = 84, Int(2)
  c.sft.seed = 0, COUNT  # init and warm-start seed: the base model (c.seed varies the RL run only)
  c.sft.cache_dir = "", Text()  # '' -> WORKDIR/warm_start; runs may share one base model

def _task(c: Declared) -> None:
  c.task = Declared()
  # a key of jaxdistill.tasks.TASKS
  c.task.name = "countdown", registry("jaxdistill.tasks", "TASKS")
  c.task.data_seed = 0, COUNT
  # the three splits hold distinct problems (numbers and target) and share none. 3 numbers
  # make 6,926 distinct problems, so train + validation + test stay below that
  c.task.train_size = 4_000, POSITIVE
  c.task.test_size = 820, POSITIVE
  # numbers per problem, each in [1, 13]. The reference uses 4; the CPU presets use 3, which
  # a 1M-parameter model learns in minutes (targets: median 21, p90 102, 90% <= 100)
  c.task.numbers = 3, Int(2, 6)
  # validation: held out from warm start and RL training alike (learning rates and learning
  # curves are read off it, never off the test split)
  c.task.validation_size = 256, COUNT
  c.task.data_dir = "", Text()  # '' -> WORKDIR/data: train.jsonl, validation.jsonl, test.jsonl
  # '' -> problems from the generator; else a data file to carve the splits from: JSONL or
  # parquet rows with `target` and `numbers`, `nums` (TinyZero) or `input` (the reference)
  c.task.data_path = "", Text()
  # compact (character tokenizer) | chat (instruct tokenizers)
  c.task.prompt = "compact", Choice(("compact", "chat"))
  # prompt tokens (static shape): compact prompts of 3 numbers <= 32
  c.task.prompt_width = 32, POSITIVE
  # the dense reward of a malformed answer (a missing one: -1)
  c.task.malformed_reward = -1.0, Float(-1.0, 0.0)

def _reward(c: Declared) -> None:
  c.reward = Declared()
  # training reward and search terminal values (eval is always sparse). dense: -1 invalid, a
  # graded score for a wrong value, 1 solved (the reference's; the qwen presets); sparse: 1 solved,
  # else 0. On tiny every method ends above the base model with the sparse reward and not
  # with the dense one, whose -1s make most of the signal large negative advantages
  # (docs/results.md, "The sparse reward")
  c.reward.dense = False, Bool()

def _search(c: Declared) -> None:
  c.search = Declared()
  c.search.num_children = 4, POSITIVE
  c.search.max_step_tokens = 20, POSITIVE  # a step line is at most 16 tokens
  c.search.max_path_tokens = 96, POSITIVE  # prompt + completion
  c.search.temperature = 0.8, TEMPERATURE
  c.search.c_puct = 0.5, Float(0.0)
  c.search.first_play_value = 0.0, Float(-1.0, 1.0)
  c.search.num_agents = 4, POSITIVE
  c.search.num_iterations = 8, POSITIVE
  c.search.virtual_loss = "visit", Choice(("visit", "value"))  # visit | value
  c.search.root_selection = "puct", Choice(("puct", "gumbel"))  # puct | gumbel
  c.search.length_normalized_prior = False, Bool()
  c.search.dedup_children = False, Bool()  # identical candidate steps become one child
  # each candidate continued to EOS in the same decode; node value = mean rollout reward
  c.search.rollout_to_end = False, Bool()
  c.search.max_rollout_tokens = 0, COUNT  # 0: rollout.max_completion_tokens
  # step: a child ends at a step end | entropy (rollout_to_end): a child is its rollout cut
  # before the rollout's most uncertain token among the first max_step_tokens (EPTree)
  c.search.branch_at = "step", Choice(("step", "entropy"))
  # each node keeps its step's KV, an expansion prefills only the step it appends (False:
  # the whole path again, as before; the same trees)
  c.search.reuse_kv = True, Bool()
  # path: the most-visited path | tree: the tree's trajectories with tree advantages |
  # visits: cross-entropy of the path nodes' candidate steps against their visit counts
  c.search.targets = "path", registry("jaxdistill.rl.rollouts", "SEARCH_TARGETS")
  # path targets: True: a path that stopped before EOS is completed by plain sampling; False:
  # it goes to the learner as searched, scored search.unfinished_reward (the reference's)
  c.search.complete_path = True, Bool()
  c.search.unfinished_reward = -1.0, Float(-1.0, 1.0)
  # tree/visits targets: learner rows per prompt (visits: K per node)
  c.search.tree_rows = 16, POSITIVE
  c.search.step_advantage = True, Bool()  # tree targets: step-level advantages besides global ones

def _deepsearch(c: Declared) -> None:
  # algo=deepsearch (DeepSearch, arXiv 2509.25454): the tree's width is search.num_children,
  # a node one step (search.max_step_tokens, .max_path_tokens, .temperature as above)
  c.deepsearch = Declared()
  c.deepsearch.trajectories = 8, POSITIVE  # terminal paths harvested per prompt (learner rows)
  c.deepsearch.expansions = 16, POSITIVE  # expansion rounds at most per prompt
  c.deepsearch.max_depth = 6, POSITIVE  # steps; a node this deep is terminal (4 numbers: 4 steps)
  # frontier score l1 * tanh(Q parent) + l2 * step NLL + l3 * sqrt(depth / max_depth)
  c.deepsearch.frontier_q = 0.4, Float(0.0)
  c.deepsearch.frontier_entropy = 0.0, Float(0.0)
  c.deepsearch.frontier_depth = 0.01, Float(0.0)
  # the backup's depth weight never falls below this
  c.deepsearch.backup_floor = 0.1, Float(0.0, 1.0)
  # outcome of a path that ended without an answer
  c.deepsearch.incomplete_reward = -1.0, Float(-1.0, 0.0)
  # the learner rows' advantage: tree_grpo (published: node value minus the mean outcome),
  # outcome (path outcome minus the mean), node_mean (node value minus the tree's mean
  # node value over its tokens: no net push on any tree); search/frontier.py ADVANTAGES
  c.deepsearch.advantage = "tree_grpo", registry("jaxdistill.search.frontier", "ADVANTAGES")
  # adaptive training: every round_iterations iterations (0: off, every prompt searched)
  # score the next filter_pool training problems by Pass1@filter_k (plain samples at
  # search.temperature) and train the round on those at or below filter_threshold
  c.deepsearch.round_iterations = 16, COUNT
  c.deepsearch.filter_k = 4, POSITIVE
  c.deepsearch.filter_threshold = 0.25, Float(0.0, 1.0)
  # 0: round_iterations x prompts_per_iteration, the problems a round trains on, so no scored
  # problem goes untrained when nearly all are hard (tiny4: 98% are)
  c.deepsearch.filter_pool = 0, COUNT
  # rounds in a row that score the same pool: problems still hard come back, so the ones the
  # search solved are replayed (1: every round a new pool, no problem returns within a run).
  # 4: on tiny4 the replayed share then grows 0, 16, 31, 43% over a pool's rounds
  # (docs/results.md, "Rounds that come back")
  c.deepsearch.pool_rounds = 4, POSITIVE
  # verified solutions kept per problem; a buffered problem is not searched again: n plain
  # samples, the first min(cached, n) of them replaced by its cached solutions
  c.deepsearch.replay = True, Bool()
  c.deepsearch.replay_capacity = 1024, POSITIVE  # problems in the buffer (the oldest make way)

def _rollout(c: Declared) -> None:
  c.rollout = Declared()
  c.rollout.max_completion_tokens = 64, POSITIVE  # solutions of 3 numbers: at most 50 tokens
  c.rollout.temperature = 0.8, TEMPERATURE
  c.rollout.top_p = 1.0, PROBABILITY
  c.rollout.group_size = 16, POSITIVE  # cispo
  c.rollout.best_of = 64, POSITIVE  # best_of_n

def _learner(c: Declared) -> None:
  c.learner = Declared()
  # a field left None (`placeholder`) takes its method's value from method_learner below;
  # a value given here (--config.learner.minibatches=4) is used whatever the method
  c.learner.policy_loss = None, registry("jaxdistill.rl.losses", "POLICY_LOSSES")  # cispo | ppo
  # reward_minus_value | gae (cispo: group)
  c.learner.advantage = ("reward_minus_value",
                         registry("jaxdistill.rl.batch", "ADVANTAGES", ungrouped=True))
  # group advantages divided by the group's standard deviation (GRPO); False: mean-only
  c.learner.advantage_std = True, Bool()
  c.learner.eps_high = 5.0, RATE
  c.learner.ppo_eps = 0.2, Float(0.0, 1.0, open_low=True)
  c.learner.ppo_eps_high = None, Float(0.0)  # PPO's upper clip (clip-higher); 0: ppo_eps
  c.learner.dual_clip = None, Float(0.0)  # PPO dual clip c > 1 on negative advantages (0: off)
  # sequence: mean over each sequence's tokens, then over sequences | token: over all tokens
  c.learner.loss_aggregation = None, Choice(("sequence", "token"))
  # positions whose [*, vocabulary] logits the update holds at once (0: all of them)
  c.learner.logit_chunk = 1024, COUNT
  # recompute each layer in the backward pass: keeps layer inputs only (qwen presets: on)
  c.learner.remat = False, Bool()
  c.learner.value_coef = None, Float(0.0)  # 0: no value loss, the value head untouched
  c.learner.value_trunk_grad = True, Bool()  # False: value loss trains the value head only
  c.learner.kl_coef = None, Float(0.0)
  c.learner.learning_rate = None, RATE
  c.learner.value_learning_rate = 0.0, Float(0.0)  # the value head's peak rate (0: learning_rate)
  c.learner.end_learning_rate = 0.0, Float(0.0)
  c.learner.warmup_steps = 0, COUNT  # iterations (each iteration's epochs x minibatches steps)
  c.learner.decay_steps = 0, COUNT  # iterations; 0: train.num_iterations
  c.learner.weight_decay = None, Float(0.0)
  c.learner.clip_norm = None, RATE
  c.learner.epochs = 1, POSITIVE
  c.learner.minibatches = None, POSITIVE  # gradient steps per epoch, each on a share of rows

def _train(c: Declared) -> None:
  c.train = Declared()
  # 3x the tokens of the first comparison's 64 iterations: at lr 1e-5 more updates gain
  # more than larger rates (docs/results.md, "Three times the tokens")
  c.train.num_iterations = 232, POSITIVE
  c.train.prompts_per_iteration = 8, POSITIVE
  c.train.checkpoint_every = 8, POSITIVE
  c.train.keep = 3, POSITIVE
  c.train.progress = True, Bool()
  # >0: stop once this many tokens were sampled (equal-compute runs)
  c.train.token_budget = 0, COUNT
  # True: run rollout, batch assembly and update as three programs and log each one's
  # seconds and FLOP/s (phase_s/*, phase_flop_per_s/*); False: one fused program (faster)
  c.train.phase_timing = False, Bool()
  # True: move this workdir's run aside (WORKDIR/restarted-<time>/, never deleted) and start
  # over; False: resume it, refusing settings that shape the saved state differently
  c.train.restart = False, Bool()
  c.train.max_skipped_updates = 8, POSITIVE  # non-finite updates in a row that stop the run

def _parallel(c: Declared) -> None:
  c.parallel = Declared()
  # devices each parameter, its gradient and its Adam moments are split over (1: every
  # device holds them whole); it must divide the device count. Prompts are split over all
  # devices either way. Larger: less memory per device, an all-gather of the compute-dtype
  # weights per iteration and a reduce-scatter of the gradients per update
  # (docs/design.md, "Sharded parameters"; what fits: python -m jaxdistill.bench.memory)
  c.parallel.fsdp = 1, POSITIVE

def _eval(c: Declared) -> None:
  c.eval = Declared()
  c.eval.k = 16, POSITIVE
  c.eval.seed = -1, Int(-1)  # the evaluation's own random stream (-1: the run's seed)
  c.eval.temperature = 0.2, TEMPERATURE
  c.eval.top_p = 1.0, PROBABILITY
  c.eval.max_new_tokens = 64, POSITIVE
  c.eval.batch_size = 512, POSITIVE
  c.eval.num_problems = 820, POSITIVE
  # iterations between learning-curve evaluations (0: no evaluation at all)
  c.eval.every = 58, COUNT
  c.eval.curve_problems = 256, COUNT  # learning curve: that many validation problems (0: test set)
  c.eval.split = "test", Choice(("test", "validation"))  # --mode eval: test | validation
  c.eval.at_start = True, Bool()
  # --mode eval: answer by search (budget: the search section)
  c.eval.test_time_search = False, Bool()


def tiny(c: ml_collections.ConfigDict) -> None:
  """The default: 3-number Countdown for a ~1M-parameter model on a laptop CPU."""
  del c


def smoke(c: ml_collections.ConfigDict) -> None:
  """The tiny model on a budget of about a minute, for tests and first checks."""
  c.sft.steps, c.sft.batch_size = 10, 16
  c.task.train_size, c.task.test_size = 2_000, 64
  c.search.num_agents, c.search.num_iterations = 2, 2
  c.search.max_step_tokens, c.search.max_path_tokens = 16, 80
  c.rollout.max_completion_tokens = 48
  c.train.num_iterations, c.train.checkpoint_every = 2, 1
  c.eval.k, c.eval.num_problems, c.eval.max_new_tokens, c.eval.batch_size = 4, 32, 48, 128
  c.eval.every = 2
  # two iterations: DeepSearch at the largest rate of its tiny4 grid, where its 8 steps per
  # batch move the ratio far enough for the clip to act within them
  c.method_learner.deepsearch.learning_rate = 3e-5


def _four_numbers(c: ml_collections.ConfigDict) -> None:
  """Shapes that hold every 4-number problem: prompts <= 37 tokens, a step line <= 24,
  prompt + solution + EOS <= 113 (tests/test_validation.py checks them against the data)."""
  c.task.numbers, c.task.prompt_width, c.task.train_size = 4, 40, 20_000
  c.sft.sequence_length = 116
  c.search.max_step_tokens, c.search.max_path_tokens = 28, 136
  c.rollout.max_completion_tokens = 96
  c.eval.max_new_tokens = 96


def tiny4(c: ml_collections.ConfigDict) -> None:
  """The reference's regime on a CPU: 4-number problems (three steps per solution) and the
  tiny model warm-started only so far that the base model solves a few percent of them (the
  reference's instruct model: 3.1%), where sampling rarely finds a solution."""
  _four_numbers(c)
  # base model mean@16 at T=0.2 on 256 test problems by warm-start length: 400 steps 0.1%,
  # 800 2.0%, 1200 4.8%, 1600 7.8% (experiments.calibrate; docs/results.md)
  c.sft.steps = 1200


def medium(c: ml_collections.ConfigDict) -> None:
  """For one accelerator: 4 numbers per problem (the reference's task) and a model 4x wider
  than tiny (hidden 512, about 14M parameters), which a 2-core CPU cannot train in minutes."""
  _four_numbers(c)
  m = c.model
  m.hidden_size, m.intermediate_size, m.num_attention_heads = 512, 1536, 8
  c.sft.learning_rate = 1e-3


def qwen(c: ml_collections.ConfigDict) -> None:
  """The reference's settings for a Qwen2.5 instruct model from --config.model.path."""
  c.sft.steps = 0  # the instruct model is the base
  c.model.dtype = "bfloat16"
  c.task.numbers, c.task.train_size = 4, 20_000  # the reference's 20,000 training problems
  c.task.prompt, c.task.prompt_width = "chat", 256
  c.search.max_step_tokens, c.search.max_path_tokens = 64, 512
  c.search.num_agents, c.search.num_iterations = 16, 100
  c.reward.dense = True  # the reference's training reward, with its -0.9 for a bad answer
  c.task.malformed_reward = -0.9
  # the reference distils the most-visited path as searched, an unfinished one scored -1
  c.search.complete_path, c.search.unfinished_reward = False, -1.0
  c.method_learner.default.weight_decay = 0.01  # the reference's AdamW
  c.rollout.max_completion_tokens = 256
  c.method_learner.default.learning_rate, c.learner.decay_steps = 5e-6, 2048
  c.method_learner.deepsearch.learning_rate = 1e-6  # DeepSearch's published rate
  c.learner.remat = True  # without it 32 x 768 tokens of 0.5B keep ~120 GB (bench.memory)
  c.train.num_iterations, c.train.prompts_per_iteration = 2048, 32
  c.train.checkpoint_every = 48
  c.eval.max_new_tokens, c.eval.every, c.eval.batch_size = 512, 48, 256


def qwen_7b(c: ml_collections.ConfigDict) -> None:
  """The reference's settings for Qwen2.5-7B-Instruct: parameters, gradients and Adam
  moments split over 8 devices (about 16 bytes per parameter, 120 GB, do not fit one 80 GB
  accelerator). What the iteration needs per device: docs/benchmarks.md (the planner)."""
  qwen(c)
  c.parallel.fsdp = 8
  # the search's KV pool (5.5 GiB per tree, 4 trees per device) takes the planner's 68.9 GiB
  # to 89.0: past an 80 GB device (docs/benchmarks.md, "The search's KV reuse")
  c.search.reuse_kv = False


PRESETS = {"tiny": tiny, "smoke": smoke, "tiny4": tiny4, "medium": medium,
           "qwen2.5-0.5b": qwen, "qwen2.5-1.5b": qwen, "qwen2.5-7b": qwen_7b}


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """The config of one preset: `base()` changed by the preset's function."""
  preset = preset or "tiny"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
  c = base()
  c.preset = preset
  PRESETS[preset](c)
  return c
