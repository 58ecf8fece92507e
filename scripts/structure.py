"""Print a Markdown report of a package's structure, for docs/architecture.md.

    python scripts/structure.py                           # the trio_ws package of this repository
    python scripts/structure.py --package ../baseline/trio_ws   # any package directory: before/after
    python scripts/structure.py --max-complexity 15       # exit 1 if a function is more complex (for CI)
    python scripts/structure.py --methods 10 --top 15     # the defaults

The report has three tables, and no timestamp or absolute path, so that the
same tree always prints the same text (paste it, and diff it later):

- **Modules**: every ``*.py`` file under the package (recursively), with its
  lines, its code lines, and how many functions (methods and nested functions
  included) and classes (nested included) it defines.  Code lines are lines
  that hold at least one token other than a comment, a docstring or layout
  (blank lines, line breaks, indentation); a multi-line expression or string
  counts every line it spans.  A docstring is the string expression that
  opens a module, class or function body.
- **Classes with more than ``--methods`` methods**: methods are the
  functions defined in the class body (nested in an ``if`` or ``try`` there
  too; properties, class and static methods included).  Instance attributes
  are the union of: the names assigned as ``self.x`` (``=``, ``+=``,
  annotated assignment, tuple unpacking, ``for``/``with ... as`` targets)
  anywhere in the class's methods, ``self`` being each method's first
  parameter (class and static methods are skipped); the names listed in
  ``__slots__`` (``__dict__`` and ``__weakref__`` excluded); and, for a class
  decorated with ``@dataclass``, its annotated fields (``ClassVar`` excluded).
  Lines run from the first decorator to the last line of the class.
- **The most complex functions** (``--top``, 15 by default), by McCabe
  cyclomatic complexity, computed from the ``ast``:

  ``complexity`` follows ruff's C901 (``lint.mccabe``) rule by rule, so that
  ``--max-complexity`` agrees with ``ruff check --select C901``:
  1, plus 1 for each ``if`` and each ``elif``; 1 for each ``for``,
  ``async for`` and ``while`` (a loop's ``else`` adds nothing itself); 1 for
  each ``except`` handler (``except*`` too) and 1 for a ``try``'s ``else``
  (``finally`` adds nothing); 1 for each ``case`` of a ``match``, less 1 when
  the last case is irrefutable and unguarded (``case _:``, ``case x:``, an
  or-pattern with such an alternative: it is the ``else``); 1 for each
  function defined inside the function (a closure), whose body counts too, as
  does the body of a class defined inside it.  ``with`` adds nothing.
  Nothing inside an expression counts.

  ``extended`` adds the decision points inside expressions that C901 leaves
  out: each operand after the first of an ``and``/``or``, each conditional
  expression, each ``for`` and each ``if`` of a comprehension or generator
  expression, and each ``assert`` (it raises or not).  Lambdas count where
  they are written.  ``--rank extended`` ranks and checks by it instead.

  Where the ``mccabe`` package (flake8's C901) differs from ruff, this follows
  ruff: mccabe counts a ``try`` without ``else`` one higher than ruff (its
  graph has an edge around the ``try``), ignores what is inside ``finally``
  and ``match`` blocks and ``try``/``except*``, and reports only top-level
  functions and methods, not nested functions.
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACKAGE = REPO_ROOT / "trio_ws"

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
SCOPE_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
LAYOUT_TOKENS = frozenset(
    {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENCODING,
        tokenize.ENDMARKER,
    }
)


@dataclass
class ModuleInfo:
    name: str
    lines: int
    code_lines: int
    functions: int
    classes: int


@dataclass
class ClassInfo:
    name: str
    module: str
    line: int
    methods: int
    attributes: set[str] = field(default_factory=set)
    lines: int = 0


@dataclass
class FunctionInfo:
    name: str
    module: str
    line: int
    lines: int
    complexity: int
    extended: int


# --- lines ---------------------------------------------------------------------------------


def docstring_spans(tree: ast.Module) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every docstring: the string that opens a module, class or function body."""
    spans = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, *SCOPE_NODES)) or not node.body:
            continue
        first = node.body[0]
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
            and first.end_lineno is not None
            and first.end_col_offset is not None
        ):
            spans.append(((first.lineno, first.col_offset), (first.end_lineno, first.end_col_offset)))
    return spans


def code_lines(source: str, tree: ast.Module) -> int:
    """Lines holding a token that is not a comment, a docstring or layout."""
    spans = docstring_spans(tree)
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in LAYOUT_TOKENS:
            continue
        if token.type == tokenize.STRING and any(start <= token.start and token.end <= end for start, end in spans):
            continue
        lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines)


def first_line(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
    return min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])


def span(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
    return (node.end_lineno or node.lineno) - first_line(node) + 1


# --- complexity ----------------------------------------------------------------------------


def pattern_is_irrefutable(pattern: ast.pattern) -> bool:
    """``case _``, ``case name``, ``case (_ as name)``, or an or-pattern with such an alternative."""
    if isinstance(pattern, ast.MatchAs):
        return pattern.pattern is None or pattern_is_irrefutable(pattern.pattern)
    if isinstance(pattern, ast.MatchOr):
        return any(pattern_is_irrefutable(alternative) for alternative in pattern.patterns)
    return False


def statement_points(body: Sequence[ast.stmt]) -> int:
    """Decision points of a block of statements, by ruff's C901 rules (see the module docstring)."""
    points = 0
    for stmt in body:
        if isinstance(stmt, ast.If):
            points += 1 + statement_points(stmt.body) + statement_points(stmt.orelse)  # an elif is an If in orelse
        elif isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            points += 1 + statement_points(stmt.body) + statement_points(stmt.orelse)
        elif isinstance(stmt, (ast.With, ast.AsyncWith, ast.ClassDef)):
            points += statement_points(stmt.body)
        elif isinstance(stmt, (ast.Try, ast.TryStar)):
            points += statement_points(stmt.body) + statement_points(stmt.orelse) + statement_points(stmt.finalbody)
            points += 1 if stmt.orelse else 0
            points += sum(1 + statement_points(handler.body) for handler in stmt.handlers)
        elif isinstance(stmt, ast.Match):
            points += sum(1 + statement_points(case.body) for case in stmt.cases)
            last = stmt.cases[-1] if stmt.cases else None
            if last is not None and last.guard is None and pattern_is_irrefutable(last.pattern):
                points -= 1
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            points += 1 + statement_points(stmt.body)
    return points


def expression_points(body: Sequence[ast.stmt]) -> int:
    """Decision points inside expressions (and asserts) anywhere in a block, nested functions included."""
    points = 0
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.BoolOp):
                points += len(node.values) - 1
            elif isinstance(node, (ast.IfExp, ast.Assert)):
                points += 1
            elif isinstance(node, ast.comprehension):
                points += 1 + len(node.ifs)
    return points


def complexity(function: FunctionNode) -> tuple[int, int]:
    """(C901 complexity, extended complexity) of one function."""
    base = 1 + statement_points(function.body)
    return base, base + expression_points(function.body)


# --- classes -------------------------------------------------------------------------------


def class_level_statements(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a class body, looking into if/try/with blocks but not into functions or classes."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.If, ast.For, ast.AsyncFor, ast.While)):
            yield from class_level_statements([*stmt.body, *stmt.orelse])
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            yield from class_level_statements(stmt.body)
        elif isinstance(stmt, (ast.Try, ast.TryStar)):
            handlers = [s for handler in stmt.handlers for s in handler.body]
            yield from class_level_statements([*stmt.body, *handlers, *stmt.orelse, *stmt.finalbody])


def is_named(node: ast.expr, names: set[str]) -> bool:
    """``name`` or ``module.name`` or ``name(...)`` for one of ``names``."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id in names
    return isinstance(node, ast.Attribute) and node.attr in names


def self_name(function: FunctionNode) -> str | None:
    """The name of an instance method's first parameter; None for static and class methods."""
    if any(is_named(decorator, {"staticmethod", "classmethod"}) for decorator in function.decorator_list):
        return None
    parameters = [*function.args.posonlyargs, *function.args.args]
    return parameters[0].arg if parameters else None


def assigned_targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor)):
        return [node.target]
    if isinstance(node, (ast.With, ast.AsyncWith)):
        return [item.optional_vars for item in node.items if item.optional_vars is not None]
    if isinstance(node, ast.comprehension):
        return [node.target]
    return []


def flatten_targets(targets: list[ast.expr]) -> Iterator[ast.expr]:
    for target in targets:
        if isinstance(target, (ast.Tuple, ast.List)):
            yield from flatten_targets(list(target.elts))
        elif isinstance(target, ast.Starred):
            yield from flatten_targets([target.value])
        else:
            yield target


def walk_skipping_classes(node: ast.AST) -> Iterator[ast.AST]:
    """ast.walk, not entering class definitions (their ``self`` is another object)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            continue
        yield child
        yield from walk_skipping_classes(child)


def self_attributes(function: FunctionNode) -> set[str]:
    self_ = self_name(function)
    if self_ is None:
        return set()
    names = set()
    for node in walk_skipping_classes(function):
        for target in flatten_targets(assigned_targets(node)):
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == self_:
                names.add(target.attr)
    return names


def slot_names(stmt: ast.stmt) -> set[str]:
    if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
        return set()
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    if not any(isinstance(target, ast.Name) and target.id == "__slots__" for target in targets):
        return set()
    value = stmt.value
    elements = value.elts if isinstance(value, (ast.Tuple, ast.List, ast.Set)) else [value]
    if isinstance(value, ast.Dict):
        elements = [key for key in value.keys if key is not None]
    names = {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return names - {"__dict__", "__weakref__"}


def class_info(node: ast.ClassDef, qualname: str, module: str) -> ClassInfo:
    info = ClassInfo(qualname, module, node.lineno, 0, lines=span(node))
    dataclass_ = any(is_named(decorator, {"dataclass"}) for decorator in node.decorator_list)
    for stmt in class_level_statements(node.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            info.methods += 1
            info.attributes |= self_attributes(stmt)
        info.attributes |= slot_names(stmt)
        if (
            dataclass_
            and isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and not is_named(stmt.annotation, {"ClassVar"})
        ):
            info.attributes.add(stmt.target.id)
    return info


# --- a module ------------------------------------------------------------------------------


@dataclass
class Report:
    modules: list[ModuleInfo] = field(default_factory=list)
    classes: list[ClassInfo] = field(default_factory=list)
    functions: list[FunctionInfo] = field(default_factory=list)


def scan_scope(body: Sequence[ast.AST], prefix: str, module: str, report: Report) -> tuple[int, int]:
    """Record every function and class under ``body``; return how many of each."""
    functions = classes = 0
    stack: list[tuple[ast.AST, str]] = [(node, prefix) for node in reversed(body)]
    while stack:
        node, outer = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions += 1
            qualname = outer + node.name
            plain, extended = complexity(node)
            report.functions.append(FunctionInfo(qualname, module, node.lineno, span(node), plain, extended))
            stack.extend((child, qualname + ".") for child in reversed(list(ast.iter_child_nodes(node))))
        elif isinstance(node, ast.ClassDef):
            classes += 1
            qualname = outer + node.name
            report.classes.append(class_info(node, qualname, module))
            stack.extend((child, qualname + ".") for child in reversed(list(ast.iter_child_nodes(node))))
        else:
            stack.extend((child, outer) for child in reversed(list(ast.iter_child_nodes(node))))
    return functions, classes


def scan_package(package: Path) -> Report:
    report = Report()
    for path in sorted(package.rglob("*.py")):
        if any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(package).parts):
            continue
        module = path.relative_to(package).as_posix()
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        functions, classes = scan_scope(tree.body, "", module, report)
        lines = len(source.splitlines())
        report.modules.append(ModuleInfo(module, lines, code_lines(source, tree), functions, classes))
    return report


# --- Markdown ------------------------------------------------------------------------------


def table(header: Sequence[str], align: str, rows: Sequence[Sequence[object]]) -> list[str]:
    """A Markdown table; ``align`` has one letter per column: l or r."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def render(package: Path, report: Report, methods: int, top: int, rank: str) -> str:
    name = package.name
    out = [f"## Structure of `{name}`", ""]
    out.append("Printed by `python scripts/structure.py`; the rules are in its docstring.")
    out.append("")
    rows: list[list[object]] = [[f"`{m.name}`", m.lines, m.code_lines, m.functions, m.classes] for m in report.modules]
    total = ModuleInfo(
        f"**total** ({len(report.modules)} modules)",
        sum(m.lines for m in report.modules),
        sum(m.code_lines for m in report.modules),
        sum(m.functions for m in report.modules),
        sum(m.classes for m in report.modules),
    )
    rows.append([total.name, total.lines, total.code_lines, total.functions, total.classes])
    out += table(["module", "lines", "code lines", "functions", "classes"], "lrrrr", rows)
    out.append("")

    big = sorted((c for c in report.classes if c.methods > methods), key=lambda c: (-c.methods, c.module, c.line))
    out.append(f"### Classes with more than {methods} methods")
    out.append("")
    if big:
        out += table(
            ["class", "module", "methods", "instance attributes", "lines"],
            "llrrr",
            [[f"`{c.name}`", f"`{c.module}:{c.line}`", c.methods, len(c.attributes), c.lines] for c in big],
        )
    else:
        out.append("None.")
    out.append("")

    def key(f: FunctionInfo) -> tuple[int, int, str, int]:
        first, second = (f.extended, f.complexity) if rank == "extended" else (f.complexity, f.extended)
        return (-first, -second, f.module, f.line)

    ranked = sorted(report.functions, key=key)[:top]
    by = "extended complexity" if rank == "extended" else "McCabe complexity (ruff C901)"
    out.append(f"### The {len(ranked)} most complex functions, by {by}")
    out.append("")
    out += table(
        ["function", "where", "complexity", "extended", "lines"],
        "llrrr",
        [[f"`{f.name}`", f"`{f.module}:{f.line}`", f.complexity, f.extended, f.lines] for f in ranked],
    )
    out.append("")
    count = len(report.functions)
    over_10 = sum(1 for f in report.functions if f.complexity > 10)
    out.append(f"{count} functions in all; {over_10} above complexity 10.")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--package", type=Path, default=DEFAULT_PACKAGE, help="package directory (default: %(default)s)"
    )
    parser.add_argument("--methods", type=int, default=10, help="list classes with more methods than this")
    parser.add_argument("--top", type=int, default=15, help="how many functions to list by complexity")
    parser.add_argument(
        "--rank", choices=["complexity", "extended"], default="complexity", help="which complexity ranks and checks"
    )
    parser.add_argument(
        "--max-complexity", type=int, default=None, help="exit with status 1 if a function's complexity is above this"
    )
    args = parser.parse_args(argv)
    package: Path = args.package.resolve()
    if not package.is_dir():
        parser.error(f"not a directory: {package}")
    report = scan_package(package)
    sys.stdout.write(render(package, report, args.methods, args.top, args.rank))
    if args.max_complexity is None:
        return 0
    attribute = "extended" if args.rank == "extended" else "complexity"
    over = [f for f in report.functions if getattr(f, attribute) > args.max_complexity]
    for f in sorted(over, key=lambda f: (f.module, f.line)):
        value = getattr(f, attribute)
        where = f"{package.name}/{f.module}:{f.line}"
        print(f"{where}: {f.name} is too complex ({value} > {args.max_complexity})", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
