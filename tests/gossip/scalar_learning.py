"""A scalar stand-in for the learning side, so protocol tests need no torch."""

import numpy as np
import trio

from transport.messages import ModelPayload


class ScalarLearning:
    """Each node's 'model' is one number; merging averages it with what arrived.

    Training adds `step` to the value, so a test can tell how many trainings a model went through.
    """

    def __init__(self, value: float, peer_id: str = "", *, step: float = 0.0) -> None:
        self.step = step
        self.peer_id = peer_id
        self.value = value
        self.trained = 0
        self.merged_senders: list[list[str]] = []
        self.finished: list[tuple[int, float]] = []

    async def train(self) -> None:
        self.trained += 1
        self.value += self.step
        await trio.sleep(0.1)  # training takes time, as the emulator charges it

    def export_model(self) -> ModelPayload:
        return ModelPayload({"x": np.array([self.value])}, weight=1.0)

    async def merge(self, models, *, mixing=None) -> None:
        self.merged_senders.append([sender for sender, _ in models])
        values = [self.value] + [float(m.tensors["x"][0]) for _, m in models]
        if mixing is None:
            self.value = float(np.mean(values))
        else:
            weights = [mixing[self.peer_id]] + [mixing[sender] for sender, _ in models]
            self.value = float(np.dot(weights, values))

    async def adopt(self, sender, model) -> bool:
        self.value = float(model.tensors["x"][0])
        await trio.lowlevel.checkpoint()
        return True

    async def aggregate(self, models):
        self.merged_senders.append([sender for sender, _ in models])
        await trio.lowlevel.checkpoint()
        mean = float(np.mean([m.tensors["x"][0] for _, m in models]))
        return ModelPayload({"x": np.array([mean])}, weight=float(len(models)))

    async def finish_round(self, round: int) -> None:
        self.finished.append((round, trio.current_time()))
