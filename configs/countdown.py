"""Countdown presets: `--config configs/countdown.py[:preset]`.

tiny (default, CPU) and smoke use a small Qwen2-architecture model with the character
tokenizer; qwen2.5-0.5b / qwen2.5-1.5b need --config.model.path to a local HF directory and
default to the reference settings (DESIGN §7). Any field can be overridden on the command
line (--config.search.num_agents=8); unknown fields are errors.
"""

import ml_collections

PRESETS = ("tiny", "smoke", "qwen2.5-0.5b", "qwen2.5-1.5b")


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """The config of one preset."""
  preset = preset or "tiny"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.algo = "mcts_distill"  # mcts_distill | cispo | best_of_n

  c.model = ml_collections.ConfigDict()
  c.model.path = ""  # local Hugging Face directory (qwen presets); '' -> built locally
  c.model.dtype = "float32"
  c.model.hidden_size = 128  # architecture of the locally built model (tiny / smoke)
  c.model.intermediate_size = 384
  c.model.num_hidden_layers = 4
  c.model.num_attention_heads = 4
  c.model.num_key_value_heads = 2
  c.model.rope_theta = 1e6

  c.sft = ml_collections.ConfigDict()  # warm start of the locally built model
  c.sft.steps = 200  # 0: no warm start (random init); not yet calibrated (issue 6)
  c.sft.batch_size = 32
  c.sft.learning_rate = 1e-3
  c.sft.warmup_steps = 20
  c.sft.sequence_length = 120  # compact prompt + solution + EOS: at most 113 tokens

  c.task = ml_collections.ConfigDict()
  c.task.data_seed = 0
  c.task.train_size = 20_000
  c.task.test_size = 820
  c.task.prompt = "compact"  # compact (character tokenizer) | chat (instruct tokenizers)
  c.task.prompt_width = 48  # prompt tokens (static shape)

  c.reward = ml_collections.ConfigDict()
  c.reward.dense = True  # training reward and search terminal values; eval is always sparse

  c.search = ml_collections.ConfigDict()
  c.search.num_children = 4
  c.search.max_step_tokens = 24
  c.search.max_path_tokens = 160
  c.search.temperature = 0.8
  c.search.c_puct = 0.5
  c.search.first_play_value = 0.0
  c.search.num_agents = 4
  c.search.num_iterations = 8
  c.search.virtual_loss = "visit"  # visit | value
  c.search.root_selection = "puct"  # puct | gumbel
  c.search.length_normalized_prior = False

  c.rollout = ml_collections.ConfigDict()
  c.rollout.max_completion_tokens = 112
  c.rollout.temperature = 0.8
  c.rollout.top_p = 1.0
  c.rollout.group_size = 16  # cispo
  c.rollout.best_of = 64  # best_of_n

  c.learner = ml_collections.ConfigDict()
  c.learner.policy_loss = "cispo"  # cispo | ppo
  c.learner.advantage = "reward_minus_value"  # reward_minus_value | gae (cispo: group)
  c.learner.eps_high = 5.0
  c.learner.ppo_eps = 0.2
  c.learner.value_coef = 1.0
  c.learner.kl_coef = 0.05
  c.learner.learning_rate = 1e-4
  c.learner.end_learning_rate = 0.0
  c.learner.warmup_steps = 0
  c.learner.decay_steps = 0  # 0: train.num_iterations
  c.learner.weight_decay = 0.0
  c.learner.clip_norm = 0.1
  c.learner.epochs = 1
  c.learner.minibatches = 1

  c.train = ml_collections.ConfigDict()
  c.train.num_iterations = 64
  c.train.prompts_per_iteration = 8
  c.train.checkpoint_every = 8
  c.train.keep = 3
  c.train.progress = True

  c.eval = ml_collections.ConfigDict()
  c.eval.k = 16
  c.eval.temperature = 0.2
  c.eval.top_p = 1.0
  c.eval.max_new_tokens = 112
  c.eval.batch_size = 512
  c.eval.num_problems = 820
  c.eval.every = 32
  c.eval.at_start = True
  c.eval.test_time_search = False  # --mode eval: answer by search (budget: the search section)

  if preset == "smoke":
    c.sft.steps, c.sft.batch_size = 10, 16
    c.task.train_size, c.task.test_size = 2_000, 64
    c.search.num_agents, c.search.num_iterations = 2, 2
    c.search.max_step_tokens, c.search.max_path_tokens = 16, 96
    c.rollout.max_completion_tokens = 48
    c.train.num_iterations, c.train.checkpoint_every = 2, 1
    c.eval.k, c.eval.num_problems, c.eval.max_new_tokens, c.eval.batch_size = 4, 32, 48, 128
    c.eval.every = 2
  if preset.startswith("qwen"):
    c.sft.steps = 0  # the instruct model is the base
    c.model.dtype = "bfloat16"
    c.task.prompt, c.task.prompt_width = "chat", 256
    c.search.max_step_tokens, c.search.max_path_tokens = 64, 512
    c.search.num_agents, c.search.num_iterations = 16, 100
    c.rollout.max_completion_tokens = 256
    c.learner.learning_rate, c.learner.decay_steps = 5e-6, 2048
    c.train.num_iterations, c.train.prompts_per_iteration = 2048, 32
    c.train.checkpoint_every = 48
    c.eval.max_new_tokens, c.eval.every, c.eval.batch_size = 512, 48, 256
  return c
