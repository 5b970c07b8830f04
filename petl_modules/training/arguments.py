"""The recipes' command line: ``train.py <method file> --key=value ...``, each argument kept whole.

SpeechBrain's ``sb.parse_arguments`` joins the unknown arguments with ``=`` and splits them again
on ``=``, so a value holding ``=`` (an output folder ``.../reduction_rate=8/seed1``, a data path)
is rewritten (``reduction_rate 8``) and ``=--key=`` inside a value becomes another option. Here
every argument is read on its own:

- SpeechBrain's run options (``--device``, ``--precision``, ``--debug``, ``--ckpt_interval_steps``,
  ...; torchrun passes none, ``torch.distributed.launch``'s ``--local-rank`` is accepted and left
  to the ``LOCAL_RANK`` variable) are parsed by SpeechBrain's own parser (``RunOptions``), which
  gives the same ``run_opts`` as ``sb.parse_arguments``; ``--ckpt_interval_minutes`` takes a
  fraction (``0.5``), as SpeechBrain's checkpoint timer does.
- Every other ``--key=value`` or ``--key value`` is an override of a yaml key. Its value is read
  as one YAML value, as SpeechBrain reads it (``8`` a number, ``True`` a boolean, ``[q, v]`` a
  list, ``null``, ``'8'`` a string, and in your own commands ``!ref <lr>``), when the whole
  argument is that value; otherwise (``a: b``, ``x # y``, several lines) it is the text as given.
  A key given twice, or a bare ``--key`` without a value, is an error.

``as_argument`` writes the text of a plain value that ``read_value`` reads back as that same
value (the sweep tool builds its recipe commands with it).

Example
-------
>>> hparams_file, run_opts, overrides = parse_arguments(
...     ["hparams/lora.yaml", "--output_folder=out/lora/reduction_rate=8/seed1", "--seed", "1",
...      "--device=cpu", "--lora_targets=[q, v]"])
>>> overrides["output_folder"], overrides["seed"], list(overrides["lora_targets"]), run_opts["device"]
('out/lora/reduction_rate=8/seed1', 1, ['q', 'v'], 'cpu')
>>> as_argument("8"), as_argument([1, "a b"]), read_value(as_argument("8"))
("'8'", "[1, 'a b']", '8')
"""

import functools
import math
import re
import sys

import ruamel.yaml
from speechbrain.utils.run_opts import RunOptions

# An override's key: a yaml key of the composed configuration.
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# torch.distributed.launch (without --use-env) passes the local rank as an argument; the rank is
# also in LOCAL_RANK, which SpeechBrain reads.
LAUNCHER_OPTIONS = ("local_rank", "local-rank")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CommandLineError(ValueError):
    """An argument of a recipe command that cannot be read (the message names it and the fix)."""


# ==================================================================== one value
def read_value(text):
    """A command-line value as the recipe uses it: the YAML value when ``text`` is one whole YAML
    value on one line (number, boolean, null, quoted string, ``[list]``, ``{mapping}``, a tag),
    else ``text`` itself; ``''`` is null (as ``--key=`` is in SpeechBrain)."""
    if text == "":
        return None
    if text != text.strip() or "\n" in text or "\r" in text:
        return text
    yaml = ruamel.yaml.YAML()
    try:
        node = yaml.compose(text)
    except ruamel.yaml.YAMLError:
        return text
    if node is None or node.end_mark.index != len(text) or node.start_mark.index != 0:
        return text  # a comment, a document marker, ...: not one value
    if isinstance(node, ruamel.yaml.nodes.ScalarNode):
        if node.style in ("|", ">"):
            return text
        if node.style is None and node.value != text and not _explicit_tag(node):
            return text
    elif not node.flow_style:
        return text  # "a: b", "- a": block collections are not values of one argument
    try:
        return yaml.load(text)
    except ruamel.yaml.YAMLError:
        return text


def yaml_code(text):
    """Whether ``text``, read as YAML, holds a tag, an anchor or an alias: what HyperPyYAML would
    evaluate (``!apply:``, ``!new:``, ``!ref <a> * 2``) or link, rather than plain data."""
    try:
        for event in ruamel.yaml.YAML().parse(text):
            if isinstance(event, ruamel.yaml.events.AliasEvent):
                return True
            if getattr(event, "anchor", None) is not None or getattr(event, "tag", None) is not None:
                return True
    except ruamel.yaml.YAMLError:
        return False
    return False


def _explicit_tag(node):
    tag = getattr(node, "tag", None)
    tag = getattr(tag, "value", tag)
    return isinstance(tag, str) and not tag.startswith("tag:yaml.org,2002:")


def _same(a, b):
    """Equal values of the same kinds (``True`` is not ``1``, ``'8'`` is not ``8``)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return isinstance(a, float) == isinstance(b, float) and a == b
    return isinstance(a, str) and isinstance(b, str) and str(a) == str(b) \
        and not _explicit_tag_value(a) and not _explicit_tag_value(b)


def _explicit_tag_value(value):
    return isinstance(value, ruamel.yaml.comments.TaggedScalar)


def as_argument(value):
    """The command-line text of ``value`` (a number, string, boolean, null or a list of them)
    that ``read_value`` reads back as the same value: strings that would read as something else
    (``'8'``, ``'True'``, ``'a: b'``, ``'!ref <x>'``) are quoted.

    Raises
    ------
    ValueError
        A value no command line can carry: a mapping, a nested list, NaN, a string holding a line
        break or another control character.
    """
    text = _text(value, inside_list=False)
    if not _same(read_value(text), value):
        raise ValueError(f"{value!r} does not read back the same from a command line")
    return text


def _text(value, inside_list):
    if isinstance(value, bool):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("NaN is not a value a run can be given")
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(float(value))
    if isinstance(value, str):
        if _CONTROL.search(value):
            raise ValueError(f"{value!r} holds a line break or another control character")
        plain = re.fullmatch(r"[A-Za-z0-9_./+@:-]*", value) if inside_list else True
        if value and plain and _same(read_value(value), value):
            return value
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)) and not inside_list:
        return "[" + ", ".join(_text(v, inside_list=True) for v in value) + "]"
    kind = "a nested list" if isinstance(value, (list, tuple)) else f"a {type(value).__name__}"
    raise ValueError(f"{kind} is not a value a command line carries (numbers, strings, booleans, "
                     "null and lists of them)")


# ==================================================================== the command line
def _run_option_parser():
    """SpeechBrain's parser of its run options, reporting errors by exception, taking no
    abbreviations (``--dev`` is not ``--device``), and minutes as fractions."""
    parser = RunOptions._create_parser()
    parser.allow_abbrev = False

    def error(message):
        raise CommandLineError(message)

    parser.error = error
    for action in parser._actions:
        if action.dest == "ckpt_interval_minutes":
            action.type = float
    return parser


@functools.lru_cache(maxsize=None)
def run_option_names():
    """``{name: nargs}`` of SpeechBrain's run options (nargs 0: a flag; '*': a list); read
    only."""
    names = {}
    for action in _run_option_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and action.dest != "help":
                names[option[2:]] = action.nargs
    return names


def split_arguments(argv):
    """``(method file, SpeechBrain run-option arguments, {key: value text})`` of ``argv``."""
    run_options = run_option_names()
    hparams_file, run_args, overrides = None, [], {}
    k = 0
    while k < len(argv):
        arg = str(argv[k])
        k += 1
        if not arg.startswith("--") or arg == "--":
            if hparams_file is None and arg not in ("-", "--") and not arg.startswith("-"):
                hparams_file = arg
                continue
            after = f" (after {argv[k - 2]})" if k > 1 else ""
            raise CommandLineError(
                f"'{arg}'{after} is not an option: write --key=value (a value holding spaces goes "
                "in one argument: --key='a b').")
        name, sep, value = arg[2:].partition("=")
        if name in LAUNCHER_OPTIONS:
            if not sep and k < len(argv) and argv[k].isdigit():
                k += 1
            continue
        if name in run_options:
            nargs = run_options[name]
            if nargs == 0:
                run_args.append(arg)
            elif nargs == "*":
                values = [value] if sep else []
                while k < len(argv) and not str(argv[k]).startswith("--"):
                    values.append(str(argv[k]))
                    k += 1
                run_args += [f"--{name}", *values]
            elif sep:
                run_args.append(arg)
            elif k < len(argv) and not str(argv[k]).startswith("--"):
                run_args += [arg, str(argv[k])]
                k += 1
            else:
                raise CommandLineError(f"--{name} needs a value: --{name}=VALUE.")
            continue
        if not KEY.fullmatch(name):
            raise CommandLineError(f"'{arg}': '{name}' is not an option name (letters, digits and "
                                   "_; write --key=value).")
        if not sep:
            if k < len(argv) and not str(argv[k]).startswith("--"):
                value = str(argv[k])
                k += 1
            else:
                raise CommandLineError(f"--{name} needs a value: --{name}=VALUE (e.g. "
                                       f"--{name}=True for a yes/no option).")
        if name in overrides:
            raise CommandLineError(f"--{name} is given twice on the command line; keep one.")
        overrides[name] = value
    if hparams_file is None:
        raise CommandLineError("no method file: the first argument is hparams/<method>.yaml "
                               "(python recipes/<DATASET>/train.py hparams/<method>.yaml "
                               "--data_folder=...).")
    return hparams_file, run_args, overrides


def parse_run_options(hparams_file, run_args):
    """SpeechBrain's ``RunOptions`` from its own arguments, with the options given marked as
    overridden (as ``sb.parse_arguments`` does)."""
    parser = _run_option_parser()
    parsed = parser.parse_args([hparams_file, *run_args])
    dest = {opt: a.dest for a in parser._actions for opt in a.option_strings}
    given = {dest[a.split("=", 1)[0]] for a in run_args if a.split("=", 1)[0] in dest}
    values = vars(parsed)
    for name in ("ckpt_interval_minutes", "ckpt_interval_steps"):
        if values.get(name) is not None and values[name] < 0:
            raise CommandLineError(f"--{name} must be >= 0 (0: no checkpoints within an epoch), "
                                   f"not {values[name]}.")
    return RunOptions(**{**values, "overridden_args": given})


def parse_arguments(argv=None):
    """``(method file, run_opts, overrides)`` of a recipe command line, as ``sb.parse_arguments``
    returns them, except that ``overrides`` is ``{key: value}`` with every value read on its own
    (``read_value``). A wrong argument exits with one line naming it (``Error on the command
    line: ...``); ``--help`` prints SpeechBrain's run options."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        _run_option_parser().print_help()
        print("\nAny other --key=value (or --key value) sets a key of the composed yaml "
              "(recipe.yaml, the method file, the dataset yaml).")
        sys.exit(0)
    try:
        hparams_file, run_args, texts = split_arguments(argv)
        run_opts = parse_run_options(hparams_file, run_args)
    except CommandLineError as err:
        sys.exit(f"Error on the command line: {err}")
    return hparams_file, run_opts, {key: read_value(text) for key, text in texts.items()}
