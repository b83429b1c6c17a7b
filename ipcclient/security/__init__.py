"""The security model: principals, blessings, caveats, patterns and discharges (sans-IO).

Owns: everything about keys and identities that does not touch a socket. Importing this
package registers the ``blessings``, ``discharge`` and ``caveat`` CBOR tags with the codec.

Must not: import the wire, transport, naming or client layers; open sockets; start threads.
The VC handshake (a layer above) signs its transcript with :data:`PURPOSE_HANDSHAKE` and
validates the peer with :func:`validate_blessings`.
"""

from ipcclient.security import caveats
from ipcclient.security.blessings import (
    MAX_CHAIN_DEPTH,
    MAX_CHAINS,
    Blessings,
    Certificate,
    RejectedBlessing,
    validate_blessings,
)
from ipcclient.security.caveats import (
    CallInfo,
    Caveat,
    ExpiryCaveat,
    MethodCaveat,
    PeerBlessingsCaveat,
    SecurityCall,
    ThirdPartyCaveat,
    ThirdPartyRequirements,
    UnconstrainedCaveat,
    UnknownCaveat,
    validate_caveats,
)
from ipcclient.security.discharges import (
    Discharge,
    DischargeCache,
    DischargeImpetus,
    filtered_impetus,
    issue_discharge,
)
from ipcclient.security.keys import (
    PURPOSE_CERTIFICATE,
    PURPOSE_DISCHARGE,
    PURPOSE_HANDSHAKE,
    PURPOSE_MESSAGE,
    PURPOSE_STATE,
    PublicKey,
    signed_bytes,
)
from ipcclient.security.patterns import (
    ALL_PRINCIPALS,
    CHAIN_SEPARATOR,
    BlessingPattern,
    is_valid_extension,
    validate_extension,
)
from ipcclient.security.principal import Principal
from ipcclient.security.store import BlessingRoots, BlessingStore

__all__ = [
    "ALL_PRINCIPALS",
    "CHAIN_SEPARATOR",
    "MAX_CHAINS",
    "MAX_CHAIN_DEPTH",
    "PURPOSE_CERTIFICATE",
    "PURPOSE_DISCHARGE",
    "PURPOSE_HANDSHAKE",
    "PURPOSE_MESSAGE",
    "PURPOSE_STATE",
    "BlessingPattern",
    "BlessingRoots",
    "BlessingStore",
    "Blessings",
    "CallInfo",
    "Caveat",
    "Certificate",
    "Discharge",
    "DischargeCache",
    "DischargeImpetus",
    "ExpiryCaveat",
    "MethodCaveat",
    "PeerBlessingsCaveat",
    "Principal",
    "PublicKey",
    "RejectedBlessing",
    "SecurityCall",
    "ThirdPartyCaveat",
    "ThirdPartyRequirements",
    "UnconstrainedCaveat",
    "UnknownCaveat",
    "caveats",
    "filtered_impetus",
    "is_valid_extension",
    "issue_discharge",
    "signed_bytes",
    "validate_blessings",
    "validate_caveats",
    "validate_extension",
]
