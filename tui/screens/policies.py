"""The policies view: versions and activations per policy, diffs, apply and roll back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import Button, DataTable, Input, Static

from engine import MoatError
from tui._detail import run_graph
from tui._format import plain, printable, styled, utc
from tui._live import PolicyRow, Snapshot
from tui._policy_ops import apply_policy_file, change_lines, rollback_policy
from tui.screens.base import LiveScreen
from tui.screens.confirm import ConfirmScreen

if TYPE_CHECKING:
    from textual.app import ComposeResult

__all__ = ["PoliciesScreen"]


class PoliciesScreen(LiveScreen):
    """Pick a policy, see its versions, diff one against the active one, apply or roll back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "apply", "Apply", tooltip="Apply a policy file"),
        Binding("b", "rollback", "Roll back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.policy: str | None = None
        """The policy whose versions are shown."""
        self.version: int | None = None
        """The highlighted version."""
        self._shown: tuple[PolicyRow, ...] | None = None
        self._versions: dict[int, dict[str, Any]] = {}

    def compose_body(self) -> ComposeResult:
        """Policy list, versions, diff, apply box and the last action's outcome."""
        with Horizontal(id="policy-tables"):
            names: DataTable[Text] = DataTable(id="policy-names", cursor_type="row")
            names.add_columns("policy", "active", "versions")
            yield names
            versions: DataTable[Text] = DataTable(id="policy-versions", cursor_type="row")
            versions.add_columns("ver", "status", "created (UTC)", "parent", "activations")
            yield versions
        yield VerticalScroll(Static(id="policy-diff"), id="policy-diff-box")
        with Horizontal(id="policy-actions"):
            yield Input(placeholder="policy file to apply (YAML)", id="policy-path", compact=True)
            yield Button("Apply", id="policy-apply", compact=True)
            yield Button("Roll back", id="policy-rollback", compact=True)
        yield Static(id="policy-message", markup=False)

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Redraw the policy list when it changed."""
        if snapshot.policies == self._shown:
            return
        self._shown = snapshot.policies
        table = self.query_one("#policy-names", DataTable)
        table.clear()
        for row in snapshot.policies:
            active = "-" if row.active is None else f"v{row.active}"
            table.add_row(plain(row.name), Text(active), plain(row.versions), key=row.name)
        names = [row.name for row in snapshot.policies]
        if not names:
            self.query_one("#policy-diff", Static).update("no policies stored yet")
            return
        self.policy = self.policy if self.policy in names else names[0]
        table.move_cursor(row=names.index(self.policy))
        self._show_versions()

    def _show_versions(self) -> None:
        store = self.moat.reader.store
        if store is None or self.policy is None:
            return
        self._versions = {
            v["version"]: v for v in store.policy_versions(self.policy) if _is_int(v["version"])
        }
        counts = store.policy_activation_counts(self.policy)  # (not the whole history)
        table = self.query_one("#policy-versions", DataTable)
        table.clear()
        for version, row in sorted(self._versions.items(), reverse=True):
            table.add_row(
                Text(f"v{version}"),
                styled(self.app, str(row["status"])),
                Text(utc(row["created_at"])),
                Text("-" if row["parent_version"] is None else f"v{row['parent_version']}"),
                Text(str(counts.get(version, 0))),
                key=str(version),
            )
        if self.version not in self._versions:
            self.version = max(self._versions, default=None)
        if self.version is not None:
            table.move_cursor(row=sorted(self._versions, reverse=True).index(self.version))
        self._show_diff()

    def _active(self) -> int | None:
        for row in self._shown or ():
            if row.name == self.policy:
                return row.active
        return None

    def _show_diff(self) -> None:
        box = self.query_one("#policy-diff", Static)
        active, chosen = self._active(), self.version
        if chosen is None or self.policy is None:
            box.update("")
            return
        title = f"{printable(self.policy)}: v{chosen} against the active v{active}"
        body = self._versions[chosen]["body"]
        if chosen == active:
            box.update(Content(f"{title} (this is the active version)\n\n" + _pretty(body)))
            return
        old = self._versions[active]["body"] if active in self._versions else None
        unreadable = [
            f"v{v} holds no settings this view can read (its stored body is {_kind(b)})"
            for v, b in ((active, old), (chosen, body))
            if not isinstance(b, Mapping) and (b is not None or v == chosen)
        ]
        if unreadable:
            box.update(Content(title + "\n\n" + "\n".join(unreadable)))
            return
        lines = change_lines(old, body)
        parts: list[str | tuple[str, str]] = [(title, "bold"), "\n\n"]
        style = {"+": "$text-success", "-": "$text-error", "~": "$text-warning"}
        for line in lines or ["(no differences)"]:
            parts.append((line + "\n", style.get(line[:1], "")))
        box.update(Content.assemble(*parts))

    # -- events -------------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Follow the cursor in either table."""
        key = event.row_key.value
        if key is None:
            return
        if event.data_table.id == "policy-names" and key != self.policy:
            self.policy, self.version = key, None
            self._show_versions()
        elif event.data_table.id == "policy-versions" and int(key) != self.version:
            self.version = int(key)
            self._show_diff()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Apply or roll back, after confirmation."""
        if event.button.id == "policy-apply":
            self.action_apply()
        elif event.button.id == "policy-rollback":
            self.action_rollback()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the path box applies the file."""
        self.action_apply()

    def action_apply(self) -> None:
        """Ask, then apply the policy file named in the path box."""
        path_box = self.query_one("#policy-path", Input)
        path = path_box.value.strip()
        if not path:
            self._say("type the path of a policy file first")
            path_box.focus()
            return
        question = f"Apply {printable(path)}?\nIt becomes the active version for new requests."

        def answered(yes: bool | None) -> None:
            if yes:
                self._apply(path)

        self.app.push_screen(ConfirmScreen(question, "Apply"), answered)

    def action_rollback(self) -> None:
        """Ask, then reactivate the highlighted version (or the previous one)."""
        if self.policy is None:
            self._say("no policy to roll back")
            return
        name, active = self.policy, self._active()
        target = self.version if self.version != active else None
        which = f"v{target}" if target is not None else "the previously active version"
        question = f"Roll {printable(name)} back from v{active} to {which}?"

        def answered(yes: bool | None) -> None:
            if yes:
                self._rollback(name, target)

        self.app.push_screen(ConfirmScreen(question, "Roll back"), answered)

    @work(thread=True, exclusive=True, group="policy", exit_on_error=False)
    def _apply(self, path: str) -> None:
        runs = self.moat.snapshot.runs
        graphs = [run_graph({"config": dict(run.config)}, self.moat.registry) for run in runs]
        try:
            message = apply_policy_file(self.moat.db_path, path, [g for g in graphs if g])
        except (MoatError, OSError) as exc:
            message = f"not applied: {exc}"
        self.app.call_from_thread(self._done, message)

    @work(thread=True, exclusive=True, group="policy", exit_on_error=False)
    def _rollback(self, name: str, to: int | None) -> None:
        try:
            message = rollback_policy(self.moat.db_path, name, to)
        except (MoatError, OSError) as exc:
            message = f"not rolled back: {exc}"
        self.app.call_from_thread(self._done, message)

    def _done(self, message: str) -> None:
        self._say(message)
        self._shown = None
        self.version = None
        self.moat.refresh_now()

    def _say(self, message: str) -> None:
        message = printable(message, lines=True)
        self.query_one("#policy-message", Static).update(message)
        self.notify(message, timeout=4, markup=False)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    return "missing or unreadable" if value is None else f"a {type(value).__name__}"


def _pretty(body: Any) -> str:
    return json.dumps(body, indent=2, sort_keys=True, default=str)
