"""The station's OPC UA address space: a documented subset of OPC 40100-1 (OPC UA for Machine
Vision) with the same browse names where the concept is the same, plus the few variables a PLC
polls (last result, result counter, heartbeat). docs/station-opcua.md has the node map and the
differences from the companion specification.

Everything lives in the namespace ``urn:clipad:station`` under ``Objects/VisionSystem``:
``VisionStateMachine`` (with ``AutomaticModeStateMachine`` and its ``StartSingleJob`` method),
``RecipeManagement`` (``ActiveRecipe``, ``RecipeList``), ``ResultManagement`` (``GetResultById``,
``LastResult``, ``ResultCount``), ``StationState`` and ``Heartbeat``; a ``ResultReadyEventType``
event per result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from asyncua import Node, Server, ua

from clipad.runtime.station.records import JobResult, StationState, Verdict

NAMESPACE = "urn:clipad:station"

# OPC 40100-1's state names and numbers (VisionStateMachineType, VisionAutomaticModeStateMachineType)
VISION_STATES = {"Preoperational": 1, "Halted": 2, "Error": 3, "Operational": 4}
AUTOMATIC_STATES = {"Initialized": 5, "Ready": 6, "SingleExecution": 7}
# station state -> (VisionStateMachine state, AutomaticModeStateMachine state)
STATE_MAP: dict[StationState, tuple[str, str]] = {
    "ready": ("Operational", "Ready"),
    "busy": ("Operational", "SingleExecution"),
    "error": ("Error", "Initialized"),
    "halted": ("Halted", "Initialized"),
}

# ResultStateDataType (OPC 40100-1, 12.19): 0 undefined (also: not found), 1 completed, 3 aborted, 4 failed
RESULT_STATE = {Verdict.OK: 1, Verdict.NG: 1, Verdict.TIMEOUT: 3, Verdict.ERROR: 4}

V = ua.VariantType
# One result's fields, in this order everywhere: the event's fields, LastResult's variables and
# GetResultById's outputs.
RESULT_FIELDS: tuple[tuple[str, ua.VariantType, str], ...] = (
    ("ResultId", V.String, "the result's id; one result per job, so it equals JobId"),
    ("JobId", V.String, "the job's id (unique per station)"),
    ("PartId", V.String, "the part id from the trigger (or the station's counter)"),
    ("ExternalRecipeId", V.String, "the recipe the job ran on"),
    ("Verdict", V.String, "OK, NG, error or timeout (only OK passes); unknown from GetResultById when not found"),
    ("ResultState", V.Int32, "OPC 40100 ResultStateDataType: 1 completed (OK/NG), 3 aborted (timeout), 4 failed"),
    ("Why", V.String, "for error and timeout: one line saying why (busy: the queue was full)"),
    ("Score", V.Double, "normalised score in [0, 1], 0.5 at the threshold"),
    ("DefectArea", V.Double, "fraction of the image above the pixel threshold"),
    ("LatencyMs", V.Double, "trigger received to result published, ms"),
    ("InferenceMs", V.Double, "the backend's share of the job, ms"),
    ("Via", V.String, "where the trigger came from: opcua, mqtt, http, replay or camera"),
    ("TriggerTime", V.DateTime, "when the station received the trigger (UTC)"),
    ("CreationTime", V.DateTime, "when the result was made (trigger time + latency, UTC)"),
    ("Late", V.Boolean, "always false for a published result (a late verdict is only logged)"),
    ("FrameId", V.Int64, "the camera frame the job inspected (camera frame id, else the source's frame index)"),
)
EVENT_EXTRA: tuple[tuple[str, ua.VariantType, str], ...] = (
    ("Sequence", V.UInt32, "the result counter after this result (ResultCount): a gap means a lost event"),
    ("IsPartial", V.Boolean, "OPC 40100: always false"),
    ("IsSimulated", V.Boolean, "OPC 40100: always false"),
)


# A field without a value (no score for an error, every field of an unknown job) keeps its type,
# so that a PLC's typed variables can always take it: "" for text, NaN for numbers, OPC UA's null
# DateTime (1601-01-01, encoded as 0) for times, 0 for ResultState, false for Late, -1 for FrameId
# (no captured frame: the image came with the trigger).
NO_VALUE: dict[ua.VariantType, object] = {
    V.String: "",
    V.Double: math.nan,
    V.DateTime: datetime(1601, 1, 1, tzinfo=UTC),
    V.Int32: 0,
    V.Int64: -1,
    V.Boolean: False,
}


def result_values(result: JobResult | None, job_id: str = "") -> list[ua.Variant]:
    """``RESULT_FIELDS`` for ``result`` as typed Variants (None: the unknown job ``job_id``,
    Verdict "unknown")."""
    values: list[object]
    if result is None:
        values = [job_id, job_id, None, None, "unknown"]
        values += [None] * (len(RESULT_FIELDS) - len(values))
    else:
        trigger = datetime.fromtimestamp(result.triggered_at, UTC)
        created = datetime.fromtimestamp(result.triggered_at + result.latency_ms / 1000.0, UTC)
        values = [
            result.job_id,
            result.job_id,
            result.part_id,
            result.recipe,
            result.verdict.value,
            RESULT_STATE[result.verdict],
            result.why,
            result.score,
            result.defect_area,
            result.latency_ms,
            result.inference_ms,
            result.via,
            trigger,
            created,
            result.late,
            result.frame_id,
        ]
    return [
        ua.Variant(NO_VALUE[vtype] if v is None else v, vtype)
        for v, (_, vtype, _) in zip(values, RESULT_FIELDS, strict=True)
    ]


@dataclass
class StationNodes:
    """The nodes the server writes or links methods to."""

    vision_system: Node
    station_state: Node
    vision_state: StateMachine
    automatic_state: StateMachine
    active_recipe: Node
    recipe_list: Node
    start_job: Node
    get_result: Node
    last_result: dict[str, Node]
    result_count: Node
    heartbeat: Node
    result_ready_type: Node


def _datatype(vtype: ua.VariantType) -> ua.NodeId:
    """The built-in DataType of a Variant type (their numbers coincide: String 12, Double 11 ...)."""
    return ua.NodeId(ua.Int32(vtype.value))


def _arg(name: str, vtype: ua.VariantType, text: str) -> ua.Argument:
    arg = ua.Argument()
    arg.Name = name
    arg.DataType = _datatype(vtype)
    arg.ValueRank = -1
    arg.Description = ua.LocalizedText(text)
    return arg


async def _variable(parent: Node, idx: int, name: str, value: object, vtype: ua.VariantType, text: str) -> Node:
    variant = ua.Variant(NO_VALUE[vtype] if value is None else value, vtype)
    node = await parent.add_variable(idx, name, variant, vtype, _datatype(vtype))
    await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(text))))
    return node


@dataclass
class StateMachine:
    """A FiniteStateMachineType instance: its CurrentState (the state's name; its Id property:
    the state object's NodeId) and the state objects (StateType, with OPC 40100's numbers)."""

    current: Node
    current_id: Node
    states: dict[str, Node]

    async def set(self, name: str) -> None:
        await self.current.write_value(ua.Variant(ua.LocalizedText(name, "en"), V.LocalizedText))
        await self.current_id.write_value(ua.Variant(self.states[name].nodeid, V.NodeId))


async def _state_machine(
    server: Server, parent: Node, idx: int, name: str, type_name: str, states: dict[str, int]
) -> tuple[Node, StateMachine]:
    # FiniteStateMachineType is abstract: a concrete subtype named as OPC 40100's is instantiated
    machine_type = await server.create_custom_object_type(idx, type_name, ua.ObjectIds.FiniteStateMachineType)
    node = await parent.add_object(idx, name, objecttype=machine_type.nodeid)
    made = {}
    for state_name, number in states.items():
        state = await node.add_object(idx, state_name, objecttype=ua.ObjectIds.StateType)
        await (await state.get_child("0:StateNumber")).write_value(ua.Variant(number, V.UInt32))
        made[state_name] = state
    current = await node.get_child("0:CurrentState")
    machine = StateMachine(current, await current.get_child("0:Id"), made)
    await machine.set(next(iter(states)))
    return node, machine


async def build_nodes(server: Server) -> StationNodes:
    """Create the station's nodes (before the server starts); method callbacks are linked later."""
    idx = await server.register_namespace(NAMESPACE)
    objects = server.nodes.objects
    result_type = await server.create_custom_event_type(
        idx, "ResultReadyEventType", ua.ObjectIds.BaseEventType, [(n, t) for n, t, _ in RESULT_FIELDS + EVENT_EXTRA]
    )
    vision = await objects.add_object(idx, "VisionSystem")
    station_state = await _variable(
        vision, idx, "StationState", "ready", V.String, "the station's state: ready, busy, error or halted"
    )
    heartbeat = await _variable(vision, idx, "Heartbeat", 0, V.UInt32, "counts up once a second while the server runs")

    vision_sm_node, vision_sm = await _state_machine(
        server, vision, idx, "VisionStateMachine", "VisionStateMachineType", VISION_STATES
    )
    auto_sm_node, auto_sm = await _state_machine(
        server,
        vision_sm_node,
        idx,
        "AutomaticModeStateMachine",
        "VisionAutomaticModeStateMachineType",
        AUTOMATIC_STATES,
    )
    start_job = await auto_sm_node.add_method(
        idx,
        "StartSingleJob",
        None,
        [
            _arg("PartId", V.String, "the part's id; empty: the station numbers it"),
            _arg("RecipeId", V.String, "the recipe; empty or omitted: the active recipe"),
        ],
        [_arg("JobId", V.String, "the new job's id; its result follows as a ResultReadyEvent")],
    )

    recipes = await vision.add_object(idx, "RecipeManagement")
    active = await _variable(recipes, idx, "ActiveRecipe", "", V.String, "the recipe a job uses when none is named")
    recipe_list = await recipes.add_variable(idx, "RecipeList", ua.Variant([], V.String), V.String, _datatype(V.String))
    await recipe_list.write_attribute(ua.AttributeIds.ValueRank, ua.DataValue(ua.Variant(1, V.Int32)))
    await recipe_list.write_attribute(
        ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText("the recipes loaded at start")))
    )

    results = await vision.add_object(idx, "ResultManagement")
    get_result = await results.add_method(
        idx,
        "GetResultById",
        None,
        [_arg("JobId", V.String, "the job's id (the result id equals it)")],
        [_arg(n, t, text) for n, t, text in RESULT_FIELDS],
    )
    count = await _variable(results, idx, "ResultCount", 0, V.UInt32, "results published since start (wraps at 2^32)")
    last = await results.add_object(idx, "LastResult")
    last_nodes = {n: await _variable(last, idx, n, None, t, text) for n, t, text in RESULT_FIELDS}
    return StationNodes(
        vision_system=vision,
        station_state=station_state,
        vision_state=vision_sm,
        automatic_state=auto_sm,
        active_recipe=active,
        recipe_list=recipe_list,
        start_job=start_job,
        get_result=get_result,
        last_result=last_nodes,
        result_count=count,
        heartbeat=heartbeat,
        result_ready_type=result_type,
    )
