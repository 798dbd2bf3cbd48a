# pragma version 0.4.3
"""
@title ModelRegistry
@notice The models the network serves and the nodes that serve them.
        The owner registers models: a `model_root` (Merkle commitment to the
        integer program and its weights), the program length and a price per
        1,000 tokens. A registered root never changes: a new version of a
        model is a new id. Staked nodes announce their HTTP endpoint and the
        models they serve, so clients can discover nodes from the chain alone.
        The node list is capped (MAX_NODES); anyone may `prune` a listed node
        that is no longer staked, so nodes that left (or were slashed) cannot
        keep the list full: holding every slot costs MAX_NODES active stakes.
"""

# ---------------------------------------------------------------- interfaces

interface IStakeManager:
    def is_active(_node: address) -> bool: view

# ---------------------------------------------------------------- events

event ModelRegistered:
    model_id: indexed(uint256)
    name: String[64]
    model_root: bytes32
    num_ops: uint256
    price_per_1k: uint256

event ModelPriceSet:
    model_id: indexed(uint256)
    price_per_1k: uint256

event ModelActiveSet:
    model_id: indexed(uint256)
    active: bool

event NodeAnnounced:
    node: indexed(address)
    endpoint: String[256]
    model_ids: DynArray[uint256, MAX_NODE_MODELS]

event NodeRetired:
    node: indexed(address)

event NodePruned:
    node: indexed(address)
    caller: indexed(address)

event OwnershipTransferred:
    previous: indexed(address)
    owner: indexed(address)

# ---------------------------------------------------------------- constants

MAX_NODE_MODELS: constant(uint256) = 16
MAX_NODES: constant(uint256) = 1024

# ---------------------------------------------------------------- storage

struct Model:
    name: String[64]
    model_root: bytes32
    num_ops: uint256
    price_per_1k: uint256
    active: bool

struct NodeInfo:
    endpoint: String[256]
    model_ids: DynArray[uint256, MAX_NODE_MODELS]
    listed: bool

# @dev Governs the model list.
owner: public(address)
# @dev Source of truth for whether a node is staked.
stake_manager: public(IStakeManager)
# @dev Number of registered models; ids are 1..model_count.
model_count: public(uint256)
# @dev Registered models by id.
models: HashMap[uint256, Model]
# @dev Model id by name, so names stay unique.
model_id_by_name: public(HashMap[String[64], uint256])
# @dev Announced nodes, for enumeration.
node_list: public(DynArray[address, MAX_NODES])
# @dev Endpoint and models per announced node.
node_info: HashMap[address, NodeInfo]
# @dev Position of a node in node_list, plus one (0 = not listed).
node_position: HashMap[address, uint256]


@deploy
def __init__(_stake_manager: IStakeManager):
    self.owner = msg.sender
    self.stake_manager = _stake_manager


# ---------------------------------------------------------------- external: governance

@external
def register_model(_name: String[64], _model_root: bytes32, _num_ops: uint256, _price_per_1k: uint256) -> uint256:
    """
    @notice Register a model; returns its id.
    """
    self._only_owner()
    assert len(_name) > 0, "ModelRegistry: empty name"
    assert self.model_id_by_name[_name] == 0, "ModelRegistry: name taken"
    assert _model_root != empty(bytes32), "ModelRegistry: empty model root"
    assert _num_ops > 0, "ModelRegistry: empty program"
    model_id: uint256 = self.model_count + 1
    self.model_count = model_id
    self.models[model_id] = Model(name=_name, model_root=_model_root, num_ops=_num_ops, price_per_1k=_price_per_1k, active=True)
    self.model_id_by_name[_name] = model_id
    log ModelRegistered(model_id=model_id, name=_name, model_root=_model_root, num_ops=_num_ops, price_per_1k=_price_per_1k)
    return model_id


@external
def set_price(_model_id: uint256, _price_per_1k: uint256):
    self._only_owner()
    self._known(_model_id)
    self.models[_model_id].price_per_1k = _price_per_1k
    log ModelPriceSet(model_id=_model_id, price_per_1k=_price_per_1k)


@external
def set_active(_model_id: uint256, _active: bool):
    """
    @notice Stop (or resume) accepting new results for a model. Results
            already posted stay disputable.
    """
    self._only_owner()
    self._known(_model_id)
    self.models[_model_id].active = _active
    log ModelActiveSet(model_id=_model_id, active=_active)


@external
def transfer_ownership(_owner: address):
    self._only_owner()
    assert _owner != empty(address), "ModelRegistry: owner is zero"
    log OwnershipTransferred(previous=self.owner, owner=_owner)
    self.owner = _owner


# ---------------------------------------------------------------- external: nodes

@external
def announce(_endpoint: String[256], _model_ids: DynArray[uint256, MAX_NODE_MODELS]):
    """
    @notice Publish (or update) the caller's endpoint and served models.
            Only staked nodes may announce.
    """
    assert staticcall self.stake_manager.is_active(msg.sender), "ModelRegistry: node not staked"
    assert len(_endpoint) > 0, "ModelRegistry: empty endpoint"
    assert len(_model_ids) > 0, "ModelRegistry: no models"
    for model_id: uint256 in _model_ids:
        self._known(model_id)
    if self.node_position[msg.sender] == 0:
        assert len(self.node_list) < MAX_NODES, "ModelRegistry: node list full (prune unstaked nodes)"
        self.node_list.append(msg.sender)
        self.node_position[msg.sender] = len(self.node_list)
    self.node_info[msg.sender] = NodeInfo(endpoint=_endpoint, model_ids=_model_ids, listed=True)
    log NodeAnnounced(node=msg.sender, endpoint=_endpoint, model_ids=_model_ids)


@external
def retire():
    """
    @notice Remove the caller from the node list.
    """
    self._remove(msg.sender)
    log NodeRetired(node=msg.sender)


@external
def prune(_node: address):
    """
    @notice Anyone: remove a listed node that is no longer staked (it left,
            or was slashed), freeing its slot in the capped list.
    """
    assert not staticcall self.stake_manager.is_active(_node), "ModelRegistry: node still staked"
    self._remove(_node)
    log NodePruned(node=_node, caller=msg.sender)


# ---------------------------------------------------------------- views

@external
@view
def get_model(_model_id: uint256) -> (bytes32, uint256, uint256, bool):
    """
    @notice (model_root, num_ops, price_per_1k, active); reverts for unknown ids.
    """
    self._known(_model_id)
    m: Model = self.models[_model_id]
    return m.model_root, m.num_ops, m.price_per_1k, m.active


@external
@view
def model_active(_model_id: uint256) -> bool:
    """
    @notice Whether the model accepts new results (false for unknown ids).
    """
    return self.models[_model_id].active


@external
@view
def model_name(_model_id: uint256) -> String[64]:
    self._known(_model_id)
    return self.models[_model_id].name


@external
@view
def node_count() -> uint256:
    return len(self.node_list)


@external
@view
def get_node(_node: address) -> (String[256], DynArray[uint256, MAX_NODE_MODELS], bool):
    """
    @notice (endpoint, model ids, currently staked) of an announced node.
    """
    info: NodeInfo = self.node_info[_node]
    assert info.listed, "ModelRegistry: node not listed"
    return info.endpoint, info.model_ids, staticcall self.stake_manager.is_active(_node)


# ---------------------------------------------------------------- internal

@internal
def _remove(_node: address):
    position: uint256 = self.node_position[_node]
    assert position != 0, "ModelRegistry: node not listed"
    last: address = self.node_list[len(self.node_list) - 1]
    self.node_list[position - 1] = last
    self.node_position[last] = position
    self.node_list.pop()
    self.node_position[_node] = 0
    self.node_info[_node] = empty(NodeInfo)


@internal
@view
def _only_owner():
    assert msg.sender == self.owner, "ModelRegistry: caller is not the owner"


@internal
@view
def _known(_model_id: uint256):
    assert _model_id != 0 and _model_id <= self.model_count, "ModelRegistry: unknown model"
