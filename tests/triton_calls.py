"""The suite's one raw Triton caller: tritonclient requests with no client-side validation, what any caller
of the port can send (the ``raw_infer`` fixture; tests that need it at module level import it from here)."""

from __future__ import annotations

import numpy as np


class RawInfer:
    """Raw tritonclient calls (no client-side validation), one fresh client per call: what any caller of the
    port can send. ``inputs`` maps names to arrays, or to ``(array, datatype)`` to send a deliberately wrong
    datatype."""

    def __call__(
        self,
        server,
        model: str,
        inputs: dict,
        outputs: list[str] | None = None,
        *,
        protocol: str = "http",
        headers: dict[str, str] | None = None,
        timeout: float = 600.0,
    ) -> dict[str, np.ndarray | None]:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient
        from tritonclient.utils import np_to_triton_dtype

        lib = httpclient if protocol == "http" else grpcclient
        url = (
            server
            if isinstance(server, str)
            else (server.http_url if protocol == "http" else server.grpc_url)
        )
        client = (
            lib.InferenceServerClient(url, network_timeout=timeout, connection_timeout=timeout)
            if protocol == "http"
            else lib.InferenceServerClient(url)
        )
        try:
            tensors = []
            for name, value in inputs.items():
                array, datatype = (
                    value if isinstance(value, tuple) else (value, np_to_triton_dtype(value.dtype))
                )
                tensor = lib.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            requested = [lib.InferRequestedOutput(o) for o in outputs] if outputs else None
            kwargs = {"client_timeout": timeout} if protocol == "grpc" else {}
            result = client.infer(model, tensors, outputs=requested, headers=headers, **kwargs)
            response = result.get_response()
            names = outputs or (
                [o["name"] for o in response.get("outputs", [])]
                if protocol == "http"
                else [o.name for o in response.outputs]
            )
            return {o: result.as_numpy(o) for o in names}
        finally:
            client.close()

    def error(self, *args, **kwargs) -> str | None:
        """The server's error message, or None when the call succeeded."""
        from tritonclient.utils import InferenceServerException

        try:
            self(*args, **kwargs)
        except InferenceServerException as exc:
            return str(exc.message())
        return None
