"""The station's OPC UA server against a real asyncua client acting as the PLC, on a free loopback
port. The station behind the server is a minimal test double (submit -> job id, result by id,
state, recipes): the protocol is what is under test here."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("asyncua")

from asyncua import Client, Node, ua  # noqa: E402
from asyncua.crypto.cert_gen import setup_self_signed_certificate  # noqa: E402
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

from clipad.core.errors import ClipadError  # noqa: E402
from clipad.runtime.station.opcua import StationServer  # noqa: E402
from clipad.runtime.station.opcua_access import OpcUaAccess, OpcUaUser  # noqa: E402
from clipad.runtime.station.opcua_model import NAMESPACE  # noqa: E402
from clipad.runtime.station.records import JobResult, StationState, Trigger, Verdict  # noqa: E402


class FakeStation:
    """The station as the server sees it: numbers triggers, keeps results the test hands it."""

    def __init__(self) -> None:
        self.state: StationState = "ready"
        self.active_recipe = "bottle"
        self.recipes = ["bottle", "cable"]
        self.triggers: list[Trigger] = []
        self.results: dict[str, JobResult] = {}
        self._lock = threading.Lock()

    def submit(self, trigger: Trigger) -> str:
        with self._lock:
            self.triggers.append(trigger)
            return f"job-{len(self.triggers)}"

    def result(self, job_id: str) -> JobResult | None:
        return self.results.get(job_id)


def make_result(
    job_id: str, part_id: str, verdict: Verdict = Verdict.OK, score: float | None = 0.25, frame_id: int | None = None
) -> JobResult:
    return JobResult(
        job_id=job_id,
        part_id=part_id,
        recipe="bottle",
        verdict=verdict,
        via="opcua",
        triggered_at=time.time(),
        latency_ms=12.5,
        why="backend failed" if verdict is Verdict.ERROR else None,
        score=score,
        defect_area=None if score is None else 0.125,
        inference_ms=None if score is None else 8.0,
        frame_id=frame_id,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


async def until(probe: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await probe():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeStation, StationServer, str]]:
    threads_before = set(threading.enumerate())
    station = FakeStation()
    port = free_port()
    server = StationServer(station, f"opc.tcp://127.0.0.1:{port}")
    server.start()
    yield station, server, f"opc.tcp://127.0.0.1:{port}"
    server.close()
    # pytest-timeout (timeout_method = "thread") runs a timer thread per test: the current test's is
    # not the server's. Threads are compared as objects: a new thread may reuse a dead one's ident.
    leaked = [
        t.name for t in threading.enumerate() if t not in threads_before and not t.name.startswith("pytest_timeout ")
    ]
    assert not leaked, f"threads left after close: {leaked}"


async def vision_system(client: Client) -> tuple[int, Node]:
    idx = await client.get_namespace_index(NAMESPACE)
    return idx, await client.nodes.objects.get_child(f"{idx}:VisionSystem")


async def child(node: Node, idx: int, *path: str) -> Node:
    return await node.get_child([p if ":" in p else f"{idx}:{p}" for p in path])


def test_nodes_browse_by_name_and_follow_the_station(served):
    station, _, url = served

    async def main() -> None:
        async with Client(url) as client:
            idx, vs = await vision_system(client)
            names = {(await c.read_browse_name()).Name for c in await vs.get_children()}
            assert {"StationState", "Heartbeat", "VisionStateMachine", "RecipeManagement", "ResultManagement"} <= names
            state = await child(vs, idx, "StationState")
            vision_state = await child(vs, idx, "VisionStateMachine", "0:CurrentState")
            auto_state = await child(vs, idx, "VisionStateMachine", "AutomaticModeStateMachine", "0:CurrentState")
            assert await state.read_value() == "ready"
            assert (await vision_state.read_value()).Text == "Operational"
            assert (await auto_state.read_value()).Text == "Ready"
            operational = await child(vs, idx, "VisionStateMachine", "Operational")
            assert await (await child(vision_state, idx, "0:Id")).read_value() == operational.nodeid
            assert await (await child(operational, idx, "0:StateNumber")).read_value() == 4  # OPC 40100's number
            assert await (await child(vs, idx, "RecipeManagement", "ActiveRecipe")).read_value() == "bottle"
            assert await (await child(vs, idx, "RecipeManagement", "RecipeList")).read_value() == ["bottle", "cable"]
            for name in ("ResultCount", "LastResult"):
                await child(vs, idx, "ResultManagement", name)
            await child(vs, idx, "ResultManagement", "GetResultById")
            await child(vs, idx, "VisionStateMachine", "AutomaticModeStateMachine", "StartSingleJob")
            await client.nodes.root.get_child(
                ["0:Types", "0:EventTypes", "0:BaseEventType", f"{idx}:ResultReadyEventType"]
            )

            # the station changes: state and recipes follow within a poll
            station.state, station.active_recipe, station.recipes = "halted", "cable", ["bottle", "cable", "gear"]
            try:
                await until(lambda: _equals(state, "halted"))
                assert (await vision_state.read_value()).Text == "Halted"
                assert (await auto_state.read_value()).Text == "Initialized"
                assert await (await child(vs, idx, "RecipeManagement", "ActiveRecipe")).read_value() == "cable"
                recipes = await child(vs, idx, "RecipeManagement", "RecipeList")
                assert await recipes.read_value() == ["bottle", "cable", "gear"]
                station.state = "busy"
                await until(lambda: _equals(state, "busy"))
                assert (await vision_state.read_value()).Text == "Operational"
                assert (await auto_state.read_value()).Text == "SingleExecution"
            finally:
                station.state, station.active_recipe, station.recipes = "ready", "bottle", ["bottle", "cable"]
            await until(lambda: _equals(state, "ready"))

    run(main())


async def _equals(node: Node, value: object) -> bool:
    return bool(await node.read_value() == value)


def test_start_single_job_submits_an_opcua_trigger(served):
    station, _, url = served

    async def main() -> list[str]:
        async with Client(url) as client:
            idx, vs = await vision_system(client)
            auto = await child(vs, idx, "VisionStateMachine", "AutomaticModeStateMachine")
            method = f"{idx}:StartSingleJob"
            return [
                await auto.call_method(method, "part-7", "cable"),
                await auto.call_method(method, "part-8"),
                await auto.call_method(method, "", ""),
            ]

    before = len(station.triggers)
    job_ids = run(main())
    triggers = station.triggers[before:]
    assert job_ids == [f"job-{before + i}" for i in (1, 2, 3)]
    assert [(t.via, t.part_id, t.recipe) for t in triggers] == [
        ("opcua", "part-7", "cable"),
        ("opcua", "part-8", None),  # no recipe: the active one
        ("opcua", None, None),  # empty part id: the station numbers it
    ]


class Events:
    def __init__(self) -> None:
        self.received: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.received.append(event)


def test_every_result_is_one_event_and_fetchable_by_id(served):
    station, server, url = served
    results = [
        make_result(f"ev-{i}", f"p{i % 7}", Verdict.NG if i % 3 else Verdict.OK, score=0.5 + i / 200, frame_id=4000 + i)
        for i in range(49)
    ]
    results.append(make_result("ev-49", "p0", Verdict.ERROR, score=None))
    station.results.update({r.job_id: r for r in results})

    async def main() -> None:
        async with Client(url) as client:
            idx, vs = await vision_system(client)
            event_type = await client.nodes.root.get_child(
                ["0:Types", "0:EventTypes", "0:BaseEventType", f"{idx}:ResultReadyEventType"]
            )
            on_vision, on_server = Events(), Events()
            sub = await client.create_subscription(100, on_vision)
            await sub.subscribe_events(vs, event_type)
            sub2 = await client.create_subscription(100, on_server)
            await sub2.subscribe_events(client.nodes.server, event_type)
            count = await child(vs, idx, "ResultManagement", "ResultCount")
            start = await count.read_value()

            # the station's publisher thread hands the results over as fast as it can
            publisher = threading.Thread(target=lambda: [server.publish(r) for r in results])
            publisher.start()
            publisher.join()

            async def all_arrived() -> bool:
                return len(on_vision.received) >= 50 and len(on_server.received) >= 50

            await until(all_arrived)
            await asyncio.sleep(0.3)  # nothing more (a duplicate) may follow
            for got in (on_vision.received, on_server.received):
                assert [e.JobId for e in got] == [r.job_id for r in results]
            got = on_vision.received
            assert [e.Sequence for e in got] == list(range(start + 1, start + 51))  # no gap: none lost
            ng = got[1]
            assert (ng.ResultId, ng.PartId, ng.ExternalRecipeId, ng.Verdict, ng.ResultState) == (
                "ev-1",
                "p1",
                "bottle",
                "NG",
                1,
            )
            assert ng.Score == pytest.approx(0.505) and ng.DefectArea == 0.125 and ng.LatencyMs == 12.5
            assert ng.Via == "opcua" and ng.Why == "" and ng.Late is False and ng.FrameId == 4001
            assert ng.TriggerTime.timestamp() == pytest.approx(results[1].triggered_at, abs=1e-3)
            assert ng.CreationTime.timestamp() == pytest.approx(results[1].triggered_at + 0.0125, abs=1e-3)
            error = got[-1]
            assert (error.Verdict, error.ResultState, error.Why) == ("error", 4, "backend failed")
            assert math.isnan(error.Score) and math.isnan(error.InferenceMs) and error.FrameId == -1

            assert await count.read_value() == start + 50
            last = await child(vs, idx, "ResultManagement", "LastResult")
            assert await (await child(last, idx, "JobId")).read_value() == "ev-49"
            assert await (await child(last, idx, "Verdict")).read_value() == "error"
            assert math.isnan(await (await child(last, idx, "Score")).read_value())

            manager = await child(vs, idx, "ResultManagement")
            fields = await manager.call_method(f"{idx}:GetResultById", "ev-1")
            assert fields[:6] == ["ev-1", "ev-1", "p1", "bottle", "NG", 1]
            assert fields[7] == pytest.approx(0.505) and fields[11] == "opcua" and fields[15] == 4001
            assert len(fields) == 16
            unknown = await manager.call_method(f"{idx}:GetResultById", "no-such-job")
            assert unknown[:6] == ["no-such-job", "no-such-job", "", "", "unknown", 0] and unknown[15] == -1
            await sub.delete()
            await sub2.delete()

    run(main())
    assert server.dropped == 0


def test_heartbeat_advances(served):
    _, _, url = served

    async def main() -> None:
        async with Client(url) as client:
            idx, vs = await vision_system(client)
            beat = await child(vs, idx, "Heartbeat")
            first = await beat.read_value()

            async def advanced() -> bool:
                return bool(await beat.read_value() > first)

            await until(advanced, timeout_s=3.0)

    run(main())


def test_client_dropping_mid_job_fetches_its_result_after_reconnecting(served):
    station, server, url = served

    async def start_and_drop() -> str:
        client = Client(url)
        await client.connect()
        idx, vs = await vision_system(client)
        auto = await child(vs, idx, "VisionStateMachine", "AutomaticModeStateMachine")
        job_id = await auto.call_method(f"{idx}:StartSingleJob", "part-x")
        client.disconnect_socket()  # the PLC's cable is pulled: no goodbye
        return str(job_id)

    job_id = run(start_and_drop())
    result = make_result(job_id, "part-x", Verdict.NG, score=0.9)
    station.results[job_id] = result
    server.publish(result)  # the job completes while no client is connected

    async def reconnect() -> list[Any]:
        async with Client(url) as client:
            idx, vs = await vision_system(client)
            manager = await child(vs, idx, "ResultManagement")
            return list(await manager.call_method(f"{idx}:GetResultById", job_id))

    fields = run(reconnect())
    assert fields[:5] == [job_id, job_id, "part-x", "bottle", "NG"]
    assert fields[7] == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("method", "args", "status", "line"),
    [
        ("StartSingleJob", [], "BadArgumentsMissing", "0 argument(s) given, 1 needed"),
        ("StartSingleJob", [5], "BadInvalidArgument", "PartId must be a String, got Int64"),
        ("StartSingleJob", [["a", "b"]], "BadInvalidArgument", "PartId must be a String, got an array of String"),
        ("StartSingleJob", ["p", "bottle", "extra"], "BadTooManyArguments", "3 arguments given, at most 2"),
        ("StartSingleJob", ["p" * 1000], "BadInvalidArgument", "PartId is 1000 characters long, at most 256"),
        ("GetResultById", [3.5], "BadInvalidArgument", "JobId must be a String, got Double"),
    ],
)
def test_malformed_arguments_get_a_bad_status_and_one_log_line(served, caplog, method, args, status, line):
    station, _, url = served
    before = len(station.triggers)

    async def main() -> None:
        async with Client(url) as client:
            idx, vs = await vision_system(client)
            owner = (
                await child(vs, idx, "VisionStateMachine", "AutomaticModeStateMachine")
                if method == "StartSingleJob"
                else await child(vs, idx, "ResultManagement")
            )
            caplog.clear()
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await owner.call_method(f"{idx}:{method}", *args)
            assert refused.value.code == getattr(ua.StatusCodes, status)
            # the server keeps serving
            assert await (await child(vs, idx, "StationState")).read_value() == "ready"

    with caplog.at_level(logging.INFO):
        run(main())
    ours = [r for r in caplog.records if r.name == "clipad.station.opcua"]
    assert [r.getMessage() for r in ours] == [f"OPC UA {method} refused: {line}"]
    assert not [r for r in caplog.records if r.name.startswith("asyncua.server") and r.levelno < logging.WARNING]
    assert len(station.triggers) == before  # no job for a call that was not understood


# -- access rules ----------------------------------------------------------------------------------


def test_a_non_loopback_endpoint_without_credentials_is_refused():
    with pytest.raises(ClipadError, match="not loopback"):
        StationServer(FakeStation(), "opc.tcp://192.0.2.10:4840")
    with pytest.raises(ClipadError, match="opc.tcp://HOST:PORT"):
        StationServer(FakeStation(), "http://127.0.0.1:4840")


def test_user_passwords_come_from_a_file_or_the_environment_and_never_show(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("s3cret-from-file\n")
    assert OpcUaUser.from_sources("plc", password_file=secret).password == "s3cret-from-file"
    monkeypatch.setenv("CLIPAD_TEST_OPCUA_PW", "s3cret-from-env")
    user = OpcUaUser.from_sources("plc", password_env="CLIPAD_TEST_OPCUA_PW")
    assert (
        user.password == "s3cret-from-env"
        and "s3cret" not in repr(user)
        and "s3cret" not in repr(OpcUaAccess(users=(user,)))
    )
    with pytest.raises(ClipadError, match="empty"):
        OpcUaUser.from_sources("plc", password_env="CLIPAD_TEST_NO_SUCH_VARIABLE")
    with pytest.raises(ClipadError, match="cannot read"):
        OpcUaUser.from_sources("plc", password_file=tmp_path / "missing")


def test_non_loopback_endpoint_refuses_anonymous_and_accepts_the_user(tmp_path, monkeypatch, caplog):
    """The endpoint says a LAN address (TEST-NET-1) while the socket binds loopback."""
    monkeypatch.setenv("CLIPAD_TEST_OPCUA_PW", "line-4-password")
    port = free_port()
    access = OpcUaAccess(
        users=(OpcUaUser.from_sources("plc", password_env="CLIPAD_TEST_OPCUA_PW"),), cert_dir=tmp_path / "pki"
    )
    server = StationServer(FakeStation(), f"opc.tcp://192.0.2.10:{port}", bind_host="127.0.0.1", access=access)
    url = f"opc.tcp://127.0.0.1:{port}"
    client_cert, client_key = tmp_path / "plc-cert.der", tmp_path / "plc-key.pem"

    async def secure_client(user: str | None, password: str | None) -> Client:
        client = Client(url)
        client.application_uri = "urn:test:plc"  # as in its certificate
        await client.set_security(SecurityPolicyBasic256Sha256, str(client_cert), str(client_key))
        if user is not None and password is not None:
            client.set_user(user)
            client.set_password(password)
        return client

    async def main() -> None:
        await setup_self_signed_certificate(
            client_key, client_cert, "urn:test:plc", socket.gethostname(), [ExtendedKeyUsageOID.CLIENT_AUTH], {}
        )
        endpoints = await Client(url).connect_and_get_server_endpoints()
        assert endpoints and all(e.SecurityMode != ua.MessageSecurityMode.None_ for e in endpoints)
        assert {e.SecurityPolicyUri.rsplit("#", 1)[1] for e in endpoints} == {"Basic256Sha256"}
        tokens = {t.TokenType for e in endpoints for t in e.UserIdentityTokens}
        assert tokens == {ua.UserTokenType.UserName}  # no anonymous token on offer

        with pytest.raises(Exception):  # noqa: B017 - refused at the channel or the session, either is a refusal
            async with Client(url):  # unsecured and anonymous
                pass
        with pytest.raises(ua.UaStatusCodeError):  # secured channel, anonymous session
            async with await secure_client(None, None):
                pass
        with pytest.raises(ua.UaStatusCodeError) as wrong:  # secured channel, wrong password
            async with await secure_client("plc", "not-the-password"):
                pass
        assert wrong.value.code == ua.StatusCodes.BadUserAccessDenied

        async with await secure_client("plc", "line-4-password") as client:
            idx, vs = await vision_system(client)
            assert await (await child(vs, idx, "StationState")).read_value() == "ready"

    server.start()
    try:
        with caplog.at_level(logging.INFO):
            run(main())
    finally:
        server.close()
    assert (tmp_path / "pki" / "station-cert.der").is_file()  # generated once, reused on the next start
    lines = [r.getMessage() for r in caplog.records if r.name == "clipad.station.opcua"]
    assert "OPC UA: login refused for user 'plc' (unknown user or wrong password)" in lines
    server_noise = [r.getMessage() for r in caplog.records if r.name.startswith("asyncua.server")]
    assert server_noise == ["Rejected active session UserIdentityToken not supported"]  # the anonymous attempt
    assert "line-4-password" not in caplog.text and "not-the-password" not in caplog.text
