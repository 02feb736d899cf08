"""Request and response codecs: bodies in, predictions out, for the native API and the Open Inference Protocol.

``decoded`` (what a decoder makes of a body), ``media`` (content types), ``strict_json``, ``multipart``,
``images`` and ``tables`` (the native decoders per input kind), ``inputs`` (which decoder a version gets),
``outputs`` (model rows -> prediction objects), ``oip/`` (the protocol's tensors and per-version model view).
"""

from service.codecs.decoded import Decoded, InputDecoder, RawInputs
from service.codecs.inputs import decoder_for, input_limits
from service.codecs.media import check_media_type, media_type_of

__all__ = ["Decoded", "InputDecoder", "RawInputs", "check_media_type", "decoder_for", "input_limits", "media_type_of"]
