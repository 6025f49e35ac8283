"""What a compiled SPMD program's collectives can do to the devices that run it, read off its
optimized HLO text (`jax.stages.Compiled.as_text()`).

Two findings, per program:
- **divergence**: a collective inside a conditional, or inside a loop whose trip count XLA
  does not know. Under `shard_map` each device decides a branch or a loop's end from its own
  data; if the devices decide differently, some reach the collective and others never do
  (a hang on every backend). A loop with a known trip count (`fori_loop`, `scan`) is safe.
- **threads blocked per device**: how many of one device's threads can be blocked in
  collectives at once on XLA:CPU. Its runtime (`ThunkExecutor`) runs each device's thunks on
  one shared thread pool; a collective blocks its thread until every device has reached it.
  Collectives are chained in program order by *scheduling* edges, which release the next
  collective when the previous one has been *launched*: a plain collective returns when it
  is done, but a loop (or a call) runs its body asynchronously and returns at once, so a
  collective after a loop that holds collectives can start while the loop's own
  collectives still wait to run. Each such overlap is a hazard: with fewer than
  (devices x blocked) threads in the pool, every thread can end up blocked in a collective
  that waits for a device that has no thread left (XLA:CPU's pool has max(cores, devices)
  threads by default: `jaxdistill.cpu_threads` raises it).

The count is an upper bound: it follows data dependencies and scheduling edges only, while
XLA:CPU also orders thunks that share a buffer (more edges, less overlap) and runs small
loop bodies inline."""

from __future__ import annotations

import dataclasses
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast", "ragged-all-to-all", "all-reduce-start",
               "all-gather-start", "collective-permute-start")
# attributes that name the computations an instruction runs
_CALLED = re.compile(r"\b(condition|body|to_apply|calls|true_computation|false_computation)="
                     r"%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_CONTROL = re.compile(r"control-predecessors=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")


@dataclasses.dataclass
class Instruction:
  name: str
  opcode: str
  operands: list[str]
  called: list[str]  # computations it runs (body and condition of a loop, branches, ...)
  control: list[str]  # control predecessors
  trip_count: int | None  # a loop's known trip count
  text: str

  @property
  def is_collective(self) -> bool:
    return self.opcode in COLLECTIVES


@dataclasses.dataclass
class Computation:
  name: str
  instructions: list[Instruction]  # in schedule order (the optimized module is scheduled)
  entry: bool = False


def _skip_type(text: str, start: int) -> int:
  """Index just past the result type that starts at text[start] (a tuple type nests)."""
  if text[start] != "(":
    end = text.find(" ", start)
    return len(text) if end < 0 else end
  depth = 0
  for i in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      return i + 1
  return len(text)


def _operand_names(text: str, start: int) -> tuple[list[str], int]:
  """(names of the operands in the parentheses at text[start], index past them)."""
  depth, i = 0, start
  for i in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      break
  inside = text[start + 1:i]
  if "%" in inside:
    names = re.findall(r"%([\w.\-]+)", inside)
  else:  # printed without '%': each operand is its name, after its type if one is printed
    names = [part.split()[-1] for part in re.split(r",\s*(?![^{\[]*[}\]])", inside)
             if part.strip()]
  return names, i + 1


def _names(text: str) -> list[str]:
  return [name.strip().lstrip("%") for name in text.split(",") if name.strip()]


def parse_instruction(line: str) -> Instruction | None:
  line = line.strip()
  if line.startswith("ROOT "):
    line = line[5:]
  name, sep, rest = line.partition(" = ")
  if not sep:
    return None
  type_end = _skip_type(rest, 0)
  call = rest[type_end:].lstrip()
  paren = call.find("(")
  if paren < 0:
    return None
  opcode = call[:paren].strip()
  operands, end = _operand_names(call, paren)
  attributes = call[end:]
  called = [match.group(2) for match in _CALLED.finditer(attributes)]
  for match in _BRANCHES.finditer(attributes):
    called += _names(match.group(1))
  control = [n for match in _CONTROL.finditer(attributes) for n in _names(match.group(1))]
  trip = _TRIP_COUNT.search(attributes)
  return Instruction(name.strip().lstrip("%"), opcode, operands, called, control,
                     int(trip.group(1)) if trip else None, line)


def parse_module(text: str) -> dict[str, Computation]:
  """The computations of an HLO module's text, by name."""
  computations, current = {}, None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header and current is None:
      current = Computation(header.group(2), [], entry=bool(header.group(1)))
      continue
    if current is None:
      continue
    if line.strip() == "}":
      computations[current.name] = current
      current = None
      continue
    instruction = parse_instruction(line)
    if instruction is not None:
      current.instructions.append(instruction)
  return computations


@dataclasses.dataclass
class Report:
  """What `analyze` found in one program."""

  collectives: int  # collective instructions, in every computation the program runs
  loops_with_collectives: int
  divergent: list[str]  # 'collective X in a conditional' / '... in a loop of unknown trip count'
  overlaps: list[str]  # 'X can start while loop Y's collectives still wait'
  blocked_threads: int  # most threads of one device blocked in collectives at once

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def analyze(text: str) -> Report:
  """Divergence and the threads-blocked bound of an optimized HLO module (see the module
  docstring)."""
  computations = parse_module(text)
  entry = next((c for c in computations.values() if c.entry), None)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  holds: dict[str, bool] = {}

  def holds_collective(name: str) -> bool:  # the computation, or one it runs, has one
    if name not in holds:
      holds[name] = False  # cycles cannot occur; this guards a malformed text
      computation = computations.get(name)
      holds[name] = computation is not None and any(
          i.is_collective or any(holds_collective(c) for c in i.called)
          for i in computation.instructions)
    return holds[name]

  divergent, overlaps = [], []
  counted = {"collectives": 0, "loops": 0}
  blocked: dict[str, int] = {}

  def visit(name: str, context: str | None) -> int:
    """Threads one device can have blocked in collectives inside computation `name`;
    context: why a collective here would diverge (None: it would not)."""
    key = (name, context)
    if key in blocked:
      return blocked[key]
    computation = computations[name]
    weights, carriers = [], []  # instructions that block threads, in schedule order
    for instruction in computation.instructions:
      if instruction.is_collective:
        counted["collectives"] += 1
        if context:
          divergent.append(f"{instruction.opcode} {instruction.name} {context}")
        weights.append(1)
        carriers.append(instruction)
        continue
      inner = [c for c in instruction.called if c in computations and holds_collective(c)]
      if not inner:
        continue
      if instruction.opcode == "while":
        counted["loops"] += 1
        where = context or (None if instruction.trip_count is not None else
                            f"in loop {instruction.name} of unknown trip count")
      elif instruction.opcode == "conditional":
        where = context or f"in conditional {instruction.name}"
      else:
        where = context
      weights.append(max(visit(c, where) for c in inner))
      carriers.append(instruction)
    result = _widest_overlap(computation, carriers, weights, overlaps)
    blocked[key] = result
    return result

  threads = visit(entry.name, None)
  return Report(collectives=counted["collectives"],
                loops_with_collectives=counted["loops"],
                divergent=sorted(set(divergent)), overlaps=sorted(set(overlaps)),
                blocked_threads=threads)


def _widest_overlap(computation: Computation, carriers: list[Instruction],
                    weights: list[int], overlaps: list[str]) -> int:
  """The heaviest run of consecutive carriers that can be in flight together: each starts
  when the one before it has been launched, so a run goes on past a loop or call (they
  return at once) but ends at a plain collective (it returns when done), and no member may
  depend on an earlier one (it would wait for that one's end)."""
  if not carriers:
    return 0
  position = {i.name: n for n, i in enumerate(computation.instructions)}
  index = {c.name: n for n, c in enumerate(carriers)}
  # ancestors[x]: bitmask of the carriers x depends on, through data or control edges
  ancestors: dict[str, int] = {}
  for instruction in computation.instructions:
    mask = 0
    for name in instruction.operands + instruction.control:
      if name in position:
        mask |= ancestors.get(name, 0)
        if name in index:
          mask |= 1 << index[name]
    ancestors[instruction.name] = mask
  best = max(weights)
  for start in range(len(carriers)):
    total, members = weights[start], 1 << start
    for end in range(start + 1, len(carriers)):
      if carriers[end - 1].is_collective:  # the run stops behind a blocking collective
        break
      if ancestors[carriers[end].name] & members:
        break
      total += weights[end]
      members |= 1 << end
      overlaps.append(f"{carriers[end].opcode} {carriers[end].name} can start while "
                      f"{carriers[start].opcode} {carriers[start].name} still runs "
                      f"(in {computation.name})")
      best = max(best, total)
  return best
