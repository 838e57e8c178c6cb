"""Renderings of a derivation: terminal (rich), plain text, LaTeX, Markdown and JSON.

Deriving and printing are separate: these functions only read a :class:`Derivation`.

- :func:`to_rich` — for a person at a terminal: numbered steps, a ✓ for each verified step and
  the justification beside its number, sympy's 2-D pretty printing, the results in a box;
- :func:`to_text` — the same as plain text (``str(derivation)``);
- :func:`to_latex` — a fragment to paste into notes (``math_only=True``: one ``aligned``
  block, which is what Jupyter's ``_repr_latex_`` shows);
- :func:`to_markdown` — headings, a numbered list and ``$$ … $$`` display math;
- :func:`to_json` — a dict for tools; every expression is given as ``sympy.srepr`` (parse it
  back with ``sympy.parse_expr`` or :func:`derivations.parse`) and as ``str``.

Symbols print as the paper writes them (``alpha_bar_tm1`` as ᾱₜ₋₁ / ``\\bar{\\alpha}_{t-1}``) and
the display functions of :mod:`derivations.symbols` as the math they stand for:
``q(a, b)`` as q(a | b), ``N(x, m, v)`` as 𝒩(x; m, v), ``Expect(y, c)`` as 𝔼[y | c].
"""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING, Any, Callable

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.stringpict import prettyForm, stringPict

from derivations.step import EQ_IN_LAW, Derivation, Step

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import RenderableType

FORMATS = ("text", "latex", "markdown", "json")

# --------------------------------------------------------------------------------------------
# symbol names -> display
# --------------------------------------------------------------------------------------------
_GREEK = {
    "alpha": ("α", r"\alpha"),
    "beta": ("β", r"\beta"),
    "sigma": ("σ", r"\sigma"),
    "mu": ("μ", r"\mu"),
    "eps": ("ε", r"\epsilon"),
    "theta": ("θ", r"\theta"),
    "eta": ("η", r"\eta"),
    "snr": ("SNR", r"\mathrm{SNR}"),
}
_ACCENTS = {"bar": ("\u0304", r"\bar"), "tilde": ("\u0303", r"\tilde"), "hat": ("\u0302", r"\hat")}
_PRECOMPOSED = {("α", "bar"): "ᾱ"}
_SUBSCRIPT = str.maketrans("0123456789+-=()aehijklmnoprstuvx", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ")


def _split_name(name: str) -> tuple[str, str | None, str]:
    """'alpha_bar_tm1' -> ('alpha', 'bar', 't-1'); 'eps_theta' -> ('eps', None, 'theta')."""
    parts = name.split("_")
    base, rest = parts[0], parts[1:]
    accent = rest.pop(0) if rest and rest[0] in _ACCENTS else None
    sub = ",".join(rest)
    for tag, text in (("tm1", "t-1"), ("tm2", "t-2"), ("1T", "1:T"), ("0T", "0:T")):
        if sub == tag:
            sub = text
    return base, accent, sub


def unicode_name(name: str) -> str:
    """The symbol name as a person reads it: 'alpha_bar_tm1' -> 'ᾱₜ₋₁'."""
    base, accent, sub = _split_name(name)
    text = _GREEK.get(base, (base, None))[0]
    if accent:
        text = _PRECOMPOSED.get((text, accent), text + _ACCENTS[accent][0])
    if sub:
        sub_text = _GREEK.get(sub, (sub, None))[0]
        translated = sub_text.translate(_SUBSCRIPT)
        if all(ch in "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ," for ch in translated):
            text += translated.replace(",", "")
        else:
            text += "_" + sub_text
    return text


def latex_name(name: str) -> str:
    r"""The symbol name in LaTeX: 'alpha_bar_tm1' -> '\bar{\alpha}_{t-1}'."""
    base, accent, sub = _split_name(name)
    text = _GREEK.get(base, (None, base))[1]
    if accent:
        text = f"{_ACCENTS[accent][1]}{{{text}}}"
    if sub:
        text += "_{" + _GREEK.get(sub, (None, sub))[1] + "}"
    return text


# --------------------------------------------------------------------------------------------
# printers
# --------------------------------------------------------------------------------------------
class _Pretty(PrettyPrinter):
    """sympy's 2-D printer with the paper's symbol names and the display functions."""

    def _print_Symbol(self, e, bold_name=False):  # noqa: N802 (sympy's naming)
        return prettyForm(unicode_name(e.name))

    def _print_Function(self, e, sort=False, func_name=None, left="(", right=")"):  # noqa: N802
        name = e.func.__name__
        args = e.args
        if name in ("q", "p", "p_theta") and args:
            return self._call(unicode_name(name), args[0], args[1:], "(", ")", " | ")
        if name == "SqNorm" and len(args) == 1:
            body = self._print(args[0])
            if body.height() == 1:
                body = prettyForm(*stringPict.next("‖", body, "‖²"))
            else:
                body = prettyForm(*body.parens("|", "|"))
                body = prettyForm(*body.parens("|", "|"))
                body = prettyForm(*body.right("²"))
            return body
        if name == "N" and len(args) == 3:
            return self._call("𝒩", args[0], args[1:], "(", ")", "; ")
        if name in ("Expect", "Var") and args:
            return self._call("𝔼" if name == "Expect" else "Var", args[0], args[1:], "[", "]", " | ")
        if name == "KL" and len(args) == 2:
            return self._call("D_KL", args[0], args[1:], "(", ")", " ‖ ")
        if isinstance(e, sp.core.function.AppliedUndef):
            func_name = unicode_name(name)
        return super()._print_Function(e, sort, func_name, left, right)

    def _call(self, head, first, rest, left, right, sep):
        body = self._print(first)
        if rest:
            body = prettyForm(*stringPict.next(body, sep, self._print_seq(rest, delimiter=", ")))
        body = prettyForm(*body.parens(left, right, ifascii_nougly=True))
        out = prettyForm(binding=prettyForm.FUNC, *stringPict.next(prettyForm(head), body))
        out.prettyFunc = prettyForm(head)
        out.prettyArgs = body
        return out


class _Latex(LatexPrinter):
    """sympy's LaTeX printer with the paper's symbol names and the display functions."""

    def _print_Symbol(self, expr, style="plain"):  # noqa: N802
        return latex_name(expr.name)

    def _print_Function(self, expr, exp=None):  # noqa: N802
        name = expr.func.__name__
        args = expr.args
        text = None
        if name in ("q", "p", "p_theta") and args:
            text = self._call(latex_name(name), args, r"\left(", r"\right)", r" \mid ")
        elif name == "SqNorm" and len(args) == 1:
            text = rf"\left\|{self._print(args[0])}\right\|^{{2}}"
        elif name == "N" and len(args) == 3:
            text = self._call(r"\mathcal{N}", args, r"\left(", r"\right)", "; ")
        elif name in ("Expect", "Var") and args:
            head = r"\mathbb{E}" if name == "Expect" else r"\operatorname{Var}"
            text = self._call(head, args, r"\left[", r"\right]", r" \mid ")
        elif name == "KL" and len(args) == 2:
            text = self._call(r"D_{\mathrm{KL}}", args, r"\left(", r"\right)", r" \,\|\, ")
        elif name == "SNR":
            text = self._call(r"\operatorname{SNR}", args, r"\left(", r"\right)", ", ")
        elif isinstance(expr, sp.core.function.AppliedUndef):
            text = self._call(latex_name(name), args, r"\left(", r"\right)", ", ")
        if text is None:
            return super()._print_Function(expr, exp)
        if exp is not None:
            return rf"{text}^{{{exp}}}"
        return text

    def _call(self, head, args, left, right, sep):
        first = self._print(args[0])
        rest = ", ".join(self._print(a) for a in args[1:])
        inner = first + (sep + rest if rest else "")
        return f"{head}{left}{inner}{right}"


#: term order for printing (sympy's default)
ORDER = None


def _pretty_settings(width: int | None, use_unicode: bool) -> dict[str, Any]:
    return {"use_unicode": use_unicode, "num_columns": width, "wrap_line": True, "order": ORDER}


def pretty(expr: sp.Expr, width: int | None = 100, use_unicode: bool = True) -> str:
    """2-D text of ``expr`` with the paper's names."""
    return _Pretty(_pretty_settings(width, use_unicode)).doprint(expr)


def latex(expr: sp.Expr) -> str:
    """LaTeX of ``expr`` with the paper's names."""
    return _Latex({"order": ORDER}).doprint(expr)


def _relation(step: Step, kind: str) -> str:
    law = step.relation == EQ_IN_LAW
    return {
        "unicode": " =ᵈ " if law else " = ",
        "latex": r" \overset{d}{=} " if law else " = ",
        "str": " =d " if law else " = ",
    }[kind]


def pretty_equation(lhs: sp.Expr, rhs: sp.Expr, relation: str = " = ", width: int | None = 100) -> str:
    """``lhs relation rhs`` as one 2-D picture (baselines aligned)."""
    printer = _Pretty(_pretty_settings(width, True))
    form = prettyForm(*stringPict.next(printer._print(lhs), relation, printer._print(rhs)))
    return form.render(**printer._settings)


def latex_equation(step: Step) -> str:
    """LaTeX of a step's equality."""
    return latex(step.lhs) + _relation(step, "latex") + latex(step.rhs)


def _ref(step: Step) -> str:
    return f" ({step.ref})" if step.ref else ""


_LEGEND = "=ᵈ: equal in distribution; z, z_i, ε, ε_{t-1} ~ N(0, 1) independent; ✓: checked by sympy"


# --------------------------------------------------------------------------------------------
# terminal
# --------------------------------------------------------------------------------------------
def to_rich(d: Derivation, width: int = 100) -> "RenderableType":
    """A rich renderable: title, numbered ✓ steps with their justifications, boxed results."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    indent = 6  # the step number and its ✓
    eq_indent = 4
    parts: list[Any] = [
        Text(f"{d.name}: {d.title}", style="bold"),
        Text(d.summary, style="italic"),
        Text(""),
    ]
    for i, step in enumerate(d.steps, start=1):
        head = Table.grid(padding=(0, 1))
        head.add_column(width=indent - 1, no_wrap=True)
        head.add_column(ratio=1)
        mark = Text.assemble(
            (f"{i:>2}.", "bold"),
            (" ✓" if d.verified else " ?", "bold green" if d.verified else "bold red"),
        )
        why = Text.assemble(
            (step.why, ""),
            (f"  [{step.ref}]" if step.ref else "", "cyan"),
            ("  (given)" if step.premise else "", "dim"),
        )
        head.add_row(mark, why)
        eq = pretty_equation(step.lhs, step.rhs, _relation(step, "unicode"), width=max(width - eq_indent, 40))
        eq = "\n".join(line.rstrip() for line in eq.splitlines())
        parts.append(head)
        parts.append(Padding(Text(eq, no_wrap=True, overflow="ignore"), (0, 0, 1, eq_indent), expand=False))
    lines = []
    for key, expr in d.results.items():
        lines.append(f"{key} =")
        lines.append(_indent(pretty(expr, width=max(width - 8, 40)), 2).rstrip())
    parts.append(
        Panel(
            Text("\n".join(lines), no_wrap=True, overflow="ignore"),
            title=f"[bold]{d.name}: results[/bold]",
            border_style="green",
            expand=False,
        )
    )
    for note in d.notes:
        parts.append(Text(f"note: {note}", style="yellow"))
    parts.append(Text(_LEGEND, style="dim"))
    return Group(*parts)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


def to_text(d: Derivation, width: int = 100) -> str:
    """The terminal rendering as plain text (no colours); ``width`` >= 20 columns."""
    from rich.console import Console

    if isinstance(width, bool) or not isinstance(width, int) or width < 20:
        from ddpm_check.errors import DDPMCheckError

        raise DDPMCheckError(f"width must be an integer of at least 20 columns, got {width!r}")

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, highlight=False, soft_wrap=False).print(to_rich(d, width))
    return buf.getvalue()


to_plain = to_text


# --------------------------------------------------------------------------------------------
# LaTeX / Markdown
# --------------------------------------------------------------------------------------------
_TEX_GREEK = {
    "α": r"\alpha", "β": r"\beta", "ε": r"\epsilon", "θ": r"\theta", "σ": r"\sigma",
    "μ": r"\mu", "π": r"\pi", "ᾱ": r"\bar{\alpha}", "δ": r"\delta", "λ": r"\lambda",
}
_TEX_ACCENT = {"\u0303": r"\tilde", "\u0304": r"\bar", "\u0302": r"\hat"}
_TEX_MATH_CHARS = {
    "√": r"\surd ", "∫": r"\int ", "⋯": r"\cdots ", "≈": r"\approx ", "²": r"^2", "≠": r"\neq ",
    "~": r"\sim ", "‖": r"\|", "𝔼": r"\mathbb{E}", "𝒩": r"\mathcal{N}", "|": r"\mid ",
    "<": "<", ">": ">", "≤": r"\le ", "≥": r"\ge ", "→": r"\to ", "∞": r"\infty ", "·": r"\cdot ",
    "⁻": "^{-", "¹": "1}", "−": "-",
}
_TEX_TEXT_CHARS = {
    "{": r"\{", "}": r"\}", "&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "^": r"\^{}",
    "\\": r"\textbackslash{}", "$": r"\$", "—": "---", "–": "--",
}
_MD_TEXT_CHARS = {"*": r"\*", "_": r"\_", "$": r"\$", "\\": "\\\\"}
_IDENT = re.compile(
    r"(?P<base>[A-Za-z\u0370-\u03ff\u1fb1])(?P<acc>[\u0300-\u036f]?)"
    r"(?P<sub>_\{[^}]*\}|_[A-Za-z0-9\u0370-\u03ff]+)?"
)


# A code identifier in prose (eps_weight_beta_tilde, alphas_cumprod_prev[0]): a word of two or
# more characters before an underscore.  It is code, not a letter with a subscript.
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9]+(?:_[A-Za-z0-9]+)+(?:\[[^\]]*\])?")


def _mixed(text: str, text_chars: dict[str, str], code: Callable[[str], str]) -> str:
    """Prose with bits of math (x_{t-1}, ᾱ_t, √, ...) -> text with $...$ math segments; code
    identifiers (``_CODE``) go through ``code``."""
    parts: list[tuple[bool, str]] = []  # (is_math, text)
    i = 0
    while i < len(text):
        if text[i] == "`" and "`" in text[i + 1:]:  # `code` spans stay code
            j = text.index("`", i + 1)
            parts.append((False, code(text[i + 1:j])))
            i = j + 1
            continue
        c = _CODE.match(text, i) if i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_") else None
        if c:
            parts.append((False, code(c.group(0))))
            i = c.end()
            continue
        m = _IDENT.match(text, i)
        if m:
            base, acc, sub = m.group("base"), m.group("acc"), m.group("sub") or ""
            greek = base in _TEX_GREEK
            if greek or acc or sub:
                tex = _TEX_GREEK.get(base, base)
                if acc:
                    tex = f"{_TEX_ACCENT.get(acc, '')}{{{tex}}}"
                if sub:
                    inner = sub[2:-1] if sub.startswith("_{") else sub[1:]
                    inner = "".join(_TEX_GREEK.get(ch, ch) for ch in inner)
                    tex += "_{" + inner + "}"
                parts.append((True, tex + " "))
            else:
                parts.append((False, base))
            i = m.end()
            continue
        ch = text[i]
        if ch in _TEX_MATH_CHARS:
            parts.append((True, _TEX_MATH_CHARS[ch]))
        else:
            parts.append((False, text_chars.get(ch, ch)))
        i += 1
    out: list[str] = []
    math: list[str] = []
    for is_math, piece in parts + [(False, "")]:
        if is_math:
            math.append(piece)
            continue
        if math:
            out.append("$" + "".join(math).strip() + "$")
            math = []
        out.append(piece)
    return "".join(out)


def _math_code(name: str) -> str:
    """A result's name (a Python identifier such as x_t_mean_coef) as typewriter math, for LaTeX
    and MathJax alike: every character as written, not x with subscript t."""
    return r"\mathtt{" + name.replace("_", r"\_") + "}"


def _latex_text(text: str) -> str:
    """A justification as LaTeX prose (symbols in $...$, specials escaped)."""
    return _mixed(text, _TEX_TEXT_CHARS,
                  lambda w: r"\texttt{" + "".join(_TEX_TEXT_CHARS.get(ch, ch) for ch in w) + "}")


def _mathjax_text(text: str) -> str:
    """Plain text safe inside \\text{...} for MathJax (braces and backslashes dropped)."""
    return text.replace("\\", "/").replace("{", "(").replace("}", ")").replace("$", "")


def _markdown_text(text: str) -> str:
    """A justification as Markdown prose with $...$ inline math."""
    return _mixed(text, _MD_TEXT_CHARS, lambda w: f"`{w}`")


def to_latex(d: Derivation, math_only: bool = False) -> str:
    """LaTeX for notes (needs amsmath, amssymb); ``math_only``: a single ``$$\\begin{aligned}``."""
    if math_only:
        rows = []
        for i, step in enumerate(d.steps, start=1):
            rel = _relation(step, "latex").strip()
            rows.append(
                f"{latex(step.lhs)} &{rel} {latex(step.rhs)} "
                rf"&& \text{{({i}) {_mathjax_text(_why_latex(step))}}}"
            )
        for key, expr in d.results.items():
            rows.append(rf"\boxed{{\text{{{_mathjax_text(key)}}} = {latex(expr)}}} &&&")
        return "$$\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}$$"
    lines = [
        rf"\subsection*{{{_latex_text(d.name)}: {_latex_text(d.title)}}}",
        _latex_text(d.summary),
        "",
        r"\begin{enumerate}",
    ]
    for step in d.steps:
        mark = r" $\checkmark$" if d.verified else ""
        lines.append(rf"  \item {_latex_text(_why_latex(step))}{_latex_text(_ref(step))}{mark}")
        lines.append(r"  \begin{equation*}")
        lines.append("    " + latex_equation(step))
        lines.append(r"  \end{equation*}")
    lines.append(r"\end{enumerate}")
    lines.append(r"\paragraph{Results}")
    lines.append(r"\begin{align*}")
    rows = [rf"  \boxed{{{_math_code(k)} = {latex(v)}}}" for k, v in d.results.items()]
    lines.append(" \\\\\n".join(rows))
    lines.append(r"\end{align*}")
    for note in d.notes:
        lines.append(rf"\paragraph{{Note.}} {_latex_text(note)}")
    return "\n".join(lines) + "\n"


def _why_latex(step: Step) -> str:
    return step.why + (" (given)" if step.premise else "")


def to_markdown(d: Derivation) -> str:
    """Markdown with ``$$`` display math (renders in Jupyter, GitHub and most note tools)."""
    lines = [f"## {d.name}: {_markdown_text(d.title)}", "", _markdown_text(d.summary), ""]
    for i, step in enumerate(d.steps, start=1):
        given = " *(given)*" if step.premise else ""
        ref = f" — *{step.ref}*" if step.ref else ""
        mark = "✓" if d.verified else "?"
        lines.append(f"**{i}.** {mark} {_markdown_text(step.why)}{ref}{given}")
        lines.append("")
        lines.append(f"$$ {latex_equation(step)} $$")
        lines.append("")
    lines.append("### Results")
    lines.append("")
    for key, expr in d.results.items():
        lines.append(rf"$$ \boxed{{{_math_code(key)} = {latex(expr)}}} $$")
        lines.append("")
    for note in d.notes:
        lines.append(f"> **Note.** {_markdown_text(note)}")
        lines.append("")
    lines.append(_markdown_text(_LEGEND))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------
def _expr_json(expr: sp.Expr) -> dict[str, str]:
    return {"srepr": sp.srepr(expr), "str": str(expr), "latex": latex(expr)}


def to_json(d: Derivation) -> dict[str, Any]:
    """A JSON-ready dict.  Each expression has ``srepr`` (exact, with assumptions: parse with
    ``sympy.parse_expr``), ``str`` (parse with :func:`derivations.parse`) and ``latex``."""
    return {
        "name": d.name,
        "title": d.title,
        "summary": d.summary,
        "verified": d.verified,
        "steps": [
            {
                "number": i,
                "name": step.name,
                "why": step.why,
                "ref": step.ref,
                "relation": step.relation,
                "premise": step.premise,
                "verified": d.verified,
                "lhs": _expr_json(step.lhs),
                "rhs": _expr_json(step.rhs),
                "latex": latex_equation(step),
            }
            for i, step in enumerate(d.steps, start=1)
        ],
        "results": {key: _expr_json(expr) for key, expr in d.results.items()},
        "notes": list(d.notes),
    }


def render(d: Derivation, fmt: str, width: int = 100) -> str | dict[str, Any]:
    """Dispatch on ``fmt`` in FORMATS ('text' gives plain text here; the CLI prints to_rich)."""
    if fmt == "text":
        return to_text(d, width)
    if fmt == "latex":
        return to_latex(d)
    if fmt == "markdown":
        return to_markdown(d)
    if fmt == "json":
        return to_json(d)
    from ddpm_check.errors import DDPMCheckError

    raise DDPMCheckError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
