"""The text format of Countdown answers and of the compact prompt, shared by the task (which
reads it) and the character tokenizer (which has a token for each tag): plain constants, so
that neither module imports the other."""

STEP_START, STEP_END = "<step>", "</step>"
ANSWER_START, ANSWER_END = "<answer>", "</answer>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"  # roles of the compact (character) chat format
