"""STS GetCallerIdentity and IAM GetRole: the two identity answers the SageMaker SDK asks for.

``sagemaker.get_execution_role()`` asks STS who the caller is, expects an assumed-role ARN
(``arn:aws:sts::<account>:assumed-role/<role>/<session>``), turns it into the role's IAM ARN and
asks IAM ``GetRole`` for its path. A self-hosted platform has no IAM: every caller is the one
execution role named in the settings, and any well-formed role name is a role of this account
(roles are labels here; SigV4 keys are the access control). Both services speak the AWS query
protocol: a form-encoded POST in, XML out, errors as ``<ErrorResponse><Error>``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
import uuid
from urllib.parse import parse_qsl, quote
from xml.sax.saxutils import escape

from .asgi import BodyTooLarge, ClientGone, Receive, Scope, Send, header_map, read_body, respond
from .auth import AuthError, SigV4Verifier

STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
DEFAULT_ROLE = "StreamhostExecutionRole"
_CREATED = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
_ASSUME_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


class QueryError(Exception):
    def __init__(self, code: str, message: str, status: int = 400, sender: bool = True) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.sender = code, message, status, sender


@functools.cache
def _role_name_rule() -> tuple[re.Pattern[str], int, int, str]:
    """IAM's RoleName constraints, read from botocore's IAM service model (pattern, min, max)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("iam")
    shape = model.operation_model("GetRole").input_shape.members["RoleName"]
    pattern = shape.metadata.get("pattern", ".*")
    return re.compile(pattern), shape.metadata.get("min", 1), shape.metadata.get("max", 64), pattern


def _unique_id(prefix: str, seed: str) -> str:
    """A stable AWS-looking unique id (``AROA...``) derived from a name."""
    return prefix + hashlib.sha256(seed.encode()).hexdigest()[:17].upper()


class StsIamService:
    def __init__(self, account: str, verifier: SigV4Verifier | None, role_name: str = DEFAULT_ROLE) -> None:
        self.account = account
        self.verifier = verifier
        self.role_name = role_name

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam::{self.account}:role/{self.role_name}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send, service: str) -> tuple[str, int]:
        """Answer one STS or IAM request; returns the operation's name and the HTTP status."""
        namespace = STS_NS if service == "sts" else IAM_NS
        request_id = str(uuid.uuid4())
        headers = header_map(scope)
        action = "Unknown"
        try:
            try:
                body = await read_body(receive, 64 * 1024)
            except BodyTooLarge:
                raise QueryError("ValidationError", "The request body is larger than 64 KiB") from None
            self._authenticate(scope, headers, body)
            params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
            if scope["method"] == "POST":
                params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            action = params.get("Action", "")
            handler = {("sts", "GetCallerIdentity"): self._get_caller_identity,
                       ("iam", "GetRole"): self._get_role}.get((service, action))  # fmt: skip
            if handler is None:
                raise QueryError("InvalidAction", f"Could not find operation {action or '(no Action)'} for version "
                                 f"{params.get('Version', '')}: this platform answers STS GetCallerIdentity and IAM GetRole")  # fmt: skip
            result = handler(params, headers)
            xml = (f'<{action}Response xmlns="{namespace}"><{action}Result>{result}</{action}Result>'
                   f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>")  # fmt: skip
            await respond(send, 200, xml.encode(), {"content-type": "text/xml", "x-amzn-requestid": request_id})
            return f"{service.upper()}.{action}", 200
        except ClientGone:
            return f"{service.upper()}.{action}", 499
        except QueryError as exc:
            kind = "Sender" if exc.sender else "Receiver"
            xml = (f'<ErrorResponse xmlns="{namespace}"><Error><Type>{kind}</Type><Code>{escape(exc.code)}</Code>'
                   f"<Message>{escape(exc.message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>")  # fmt: skip
            await respond(send, exc.status, xml.encode(), {"content-type": "text/xml", "x-amzn-requestid": request_id})
            return f"{service.upper()}.{action}", exc.status

    def _authenticate(self, scope: Scope, headers: dict[str, str], body: bytes) -> None:
        if self.verifier is None:
            return
        try:
            self.verifier.verify_request(scope, headers, body)
        except AuthError as exc:
            code = {
                "UnrecognizedClientException": "InvalidClientTokenId",
                "InvalidSignatureException": "SignatureDoesNotMatch",
            }
            raise QueryError(code.get(exc.code, exc.code), exc.message, 403) from None

    def _access_key(self, headers: dict[str, str]) -> str:
        match = re.search(r"Credential=([^/,\s]+)/", headers.get("authorization", ""))
        return match[1] if match else "anonymous"

    def _get_caller_identity(self, params: dict[str, str], headers: dict[str, str]) -> str:
        session = re.sub(r"[^\w+=,.@-]", "-", self._access_key(headers))[:64] or "streamhost"
        arn = f"arn:aws:sts::{self.account}:assumed-role/{self.role_name}/{session}"
        user_id = f"{_unique_id('AROA', self.role_name)}:{session}"
        return f"<Arn>{escape(arn)}</Arn><UserId>{escape(user_id)}</UserId><Account>{self.account}</Account>"

    def _get_role(self, params: dict[str, str], headers: dict[str, str]) -> str:
        name = params.get("RoleName", "")
        pattern, low, high, text = _role_name_rule()
        if not (low <= len(name) <= high and pattern.fullmatch(name)):
            raise QueryError("ValidationError", f"1 validation error detected: Value '{name}' at 'roleName' failed to "
                             f"satisfy constraint: Member must satisfy regular expression pattern: {text} and "
                             f"have length between {low} and {high}")  # fmt: skip
        created = _CREATED.strftime("%Y-%m-%dT%H:%M:%SZ")
        policy = quote(json.dumps(_ASSUME_POLICY, separators=(",", ":")), safe="")
        return (
            f"<Role><Path>/</Path><RoleName>{escape(name)}</RoleName><RoleId>{_unique_id('AROA', name)}</RoleId>"
            f"<Arn>arn:aws:iam::{self.account}:role/{escape(name)}</Arn><CreateDate>{created}</CreateDate>"
            f"<AssumeRolePolicyDocument>{policy}</AssumeRolePolicyDocument><MaxSessionDuration>3600</MaxSessionDuration>"
            "</Role>"
        )
