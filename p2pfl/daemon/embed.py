"""Embedding a daemon node in an application.

In a trio program, use the async context manager directly::

    async with open_node(config) as handle:
        await handle.wait_for_round(10)
        print(handle.status()["accuracy"])

Anywhere else (asyncio, plain threads, a notebook), `NodeThread` runs the same thing on a trio loop
in a background thread and offers blocking calls::

    with NodeThread(config) as node:      # start() ... stop()
        node.wait_for_round(10, timeout=60)
        print(node.status()["accuracy"])

From asyncio, call the blocking methods through ``await asyncio.to_thread(node.wait_for_round, 10)``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import trio

from p2pfl.daemon.config import NodeConfig
from p2pfl.daemon.runner import NodeHandle, ProtocolEnded, open_node
from p2pfl.errors import sole_exception
from p2pfl.learner import Learner
from p2pfl.node import RoundRecord

__all__ = ["NodeThread", "open_node"]

log = logging.getLogger(__name__)


class NodeThread:
    """A node running in a background thread, with a blocking API.

    `start()` returns once the node listens, or raises what stopped it from starting as itself
    (`DataDirInUse`, `CheckpointError`, `KeyFileError`, an `OSError`...), not wrapped in the
    ExceptionGroups of the nurseries it came out of. `stop()` cancels the node, waits for the final
    checkpoint and the transport to close, and raises a `RuntimeError` caused by the error the node
    died of, if any. In a ``with`` block, an exception of the block wins over an error of the node on
    stopping: that one is logged and noted on the block's exception, which propagates.
    """

    def __init__(
        self, config: NodeConfig, *, learner: Learner | None = None, name: str = "p2pfl-node"
    ) -> None:
        self.config = config
        self._learner = learner
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()
        self._round = threading.Condition()
        self._last_round = 0
        self._protocol_done = False  # the protocol ran its last round (the node still serves)
        self._handle: NodeHandle | None = None
        self._lock = threading.Lock()  # orders stop() against the trio thread publishing its token
        self._stopping = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope = trio.CancelScope()  # the node's whole run; cancelled to abandon a start
        self._stop = trio.Event()  # set to end a started node's run
        self._error: BaseException | None = None

    # --- lifetime ------------------------------------------------------------------------------------

    def start(self, timeout: float | None = 60.0) -> NodeThread:
        """Start the node; return once it listens (at most `timeout` s).

        On a timeout the node is stopped before `TimeoutError` is raised, so that a failed start
        holds no thread, socket or data dir that would make the next attempt fail.
        """
        if self._thread.is_alive() or self._started.is_set():
            raise RuntimeError("a NodeThread can be started once")
        self._thread.start()
        if not self._started.wait(timeout):
            message = f"the node with data dir {self.config.data_dir} did not start within {timeout} s"
            try:
                self.stop()
            except Exception as exc:
                raise TimeoutError(f"{message}, and stopping it failed") from exc
            raise TimeoutError(f"{message}; it was stopped")
        if self._handle is None:
            self._thread.join()
            error, self._error = self._error, None  # reported here, not again by stop()
            if error is None:
                raise RuntimeError("the node was stopped before it started")
            raise sole_exception(error)
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the node and wait for it (at most `timeout` s).

        Idempotent, like closing a file: a no-op on a node never started or stopped already. A node
        still starting (another thread waits in `start()`) gives up starting.
        """
        if self._thread.ident is None:
            return
        with self._lock:
            self._stopping = True
            token = self._token
        if token is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._request_stop, trio_token=token)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the node did not stop within {timeout} s")
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("the node stopped with an error") from sole_exception(error)

    def __enter__(self) -> NodeThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: object
    ) -> None:
        if exc is None:
            self.stop()
            return
        # The block's own exception is what the application needs to see; an error of the node
        # while stopping is logged and noted on it rather than raised in its place.
        try:
            self.stop()
        except Exception as stop_error:
            log.error("the node failed to stop after an error in the with block", exc_info=stop_error)
            cause = f", caused by {stop_error.__cause__!r}" if stop_error.__cause__ is not None else ""
            exc.add_note(f"stopping the node also failed: {stop_error!r}{cause}")

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and self._handle is not None

    # --- queries -------------------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self._require().peer_id

    @property
    def addrs(self) -> list[str]:
        return self._call(lambda: list(self._require().addrs))

    def status(self) -> dict[str, Any]:
        """The status document (as /status serves it), taken on the node's own thread."""
        return self._call(self._require().status)

    def wait_for_round(self, round: int, timeout: float | None = None) -> int:
        """Block until the node has completed `round`; the round reached, or `TimeoutError`, or
        `ProtocolEnded` once the protocol has run its last round short of `round`."""
        with self._round:
            ok = self._round.wait_for(
                lambda: self._last_round >= round or self._protocol_done or not self._thread.is_alive(),
                timeout,
            )
            if not ok:
                raise TimeoutError(f"round {round} not reached within {timeout} s (at {self._last_round})")
            if self._last_round < round and self._thread.is_alive():
                raise ProtocolEnded(f"the protocol ended at round {self._last_round}, before round {round}")
            if self._last_round < round:
                error = self._error
                # What the node died of, as stop() gives it: not the ExceptionGroups around it.
                cause = sole_exception(error) if error is not None else None
                raise RuntimeError(f"the node stopped at round {self._last_round}") from cause
            return self._last_round

    # --- the trio side -------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as exc:  # reported by start() or stop()
            self._error = exc
        finally:
            self._started.set()
            with self._round:
                self._round.notify_all()

    async def _run(self) -> None:
        with self._scope:
            with self._lock:
                if self._stopping:  # stop() came before this thread got here
                    return
                self._token = trio.lowlevel.current_trio_token()
            async with open_node(self.config, learner=self._learner) as handle:
                self._last_round = handle.round
                handle.add_round_listener(self._on_round)
                self._handle = handle
                self._started.set()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_done, handle)
                    await self._stop.wait()
                    nursery.cancel_scope.cancel()

    async def _watch_done(self, handle: NodeHandle) -> None:
        await handle.wait_done()
        with self._round:
            self._protocol_done = True
            self._round.notify_all()

    def _request_stop(self) -> None:
        """On the trio thread: a running node ends its block (and stops as `open_node` stops it on
        exit); one still starting is cancelled, whatever it waits for."""
        if self._handle is None:
            self._scope.cancel()
        else:
            self._stop.set()

    def _on_round(self, record: RoundRecord) -> None:
        with self._round:
            self._last_round = record.round
            self._round.notify_all()

    def _require(self) -> NodeHandle:
        if self._handle is None:
            raise RuntimeError("the node is not running; call start() first")
        return self._handle

    def _call(self, fn):  # type: ignore[no-untyped-def]
        if self._token is None or not self._thread.is_alive():
            raise RuntimeError("the node is not running")
        try:
            return trio.from_thread.run_sync(fn, trio_token=self._token)
        except trio.RunFinishedError:
            raise RuntimeError("the node is not running") from None
