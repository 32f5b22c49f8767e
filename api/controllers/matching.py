"""Match suggestions, merge reviews and unmerge (role admin)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, Parameter

from api.auth import roles
from api.deps import PlatformDep, PrincipalDep
from api.params import Limit
from cdp.errors import NotFound
from cdp.ids import parse_uuid
from cdp.matching import reviews, suggestions
from cdp.matching.pages import page
from cdp.matching.tables import match_suggestions, merge_reviews
from cdp.profiles.unmerge import unmerge

ADMIN = roles("admin")


def _merged(body: dict[str, Any], merged: Any) -> dict[str, Any]:
    return {
        **body,
        "profile_id": str(merged.profile_id),
        "merged_profile_ids": [str(x) for x in merged.merged_profile_ids],
    }


class MatchSuggestionController(Controller):
    path = "/v1/match-suggestions"
    tags = ("identity resolution",)

    @get(
        "/",
        opt=ADMIN,
        summary="Match suggestions stored by `cdp match`",
        description=(
            "Items `{suggestion_id, profile_ids: [a, b], score: 0..1, reasons, status}`; "
            "`reasons` holds the per-field similarity (0..1, null where a side lacks the "
            "field), never values, and the flags `names_swapped` (first and last name swapped) "
            "`household_fields_only` (no first name or birth date agrees: at most 0.5) and "
            "`first_names_differ` (the birth dates agree, the first names given do not, as "
            "twins': at most 0.5). "
            "`status`: open (default), accepted, rejected, stale (one "
            "of the pair was merged elsewhere, or split by an unmerge: `cdp match` asks again "
            "if the pair still matches); `decided_at` and `decided_by` (the name of the "
            "API key that accepted or rejected it)."
        ),
        response_description="A page of match suggestions",
    )
    async def list_suggestions(
        self,
        platform: PlatformDep,
        status: FromQuery[str] = "open",
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
        min_score: Annotated[
            float | None,
            Parameter(
                description="Only suggestions scoring at least this (0..1)",
                schema_extra={"minimum": 0, "maximum": 1},
            ),
        ] = None,
    ) -> dict[str, Any]:
        where = []
        if min_score is not None:
            where.append(match_suggestions.c.score >= suggestions.check_min_score(min_score))
        async with platform.db.read() as conn:
            rows, next_cursor = await page(
                conn,
                match_suggestions,
                status=status,
                statuses=suggestions.STATUSES,
                limit=limit,
                cursor=cursor,
                where=where,
            )
        return {"items": [suggestions.suggestion_body(r) for r in rows], "next_cursor": next_cursor}

    @post(
        "/{suggestion_id:str}/accept",
        opt=ADMIN,
        status_code=200,
        summary="Merge the pair (provenance reviewed)",
        description="The older profile survives. 409 when the suggestion is no longer open "
        "(accepted, rejected, or stale: one of the pair was merged or split since); 404 once "
        "one of the "
        "pair was erased (an erasure removes every suggestion naming them), 410 when the "
        "erasure runs while the suggestion is accepted; 409 while an erasure request of either "
        "customer is open (it erases the customer as it found them).",
        response_description=(
            "The suggestion, now `accepted`, with the surviving `profile_id` and "
            "`merged_profile_ids`"
        ),
    )
    async def accept(
        self, suggestion_id: FromPath[str], platform: PlatformDep, principal: PrincipalDep
    ) -> dict[str, Any]:
        row, merged = await suggestions.accept(platform, suggestion_id, principal.name)
        return _merged(suggestions.suggestion_body(row), merged)

    @post(
        "/{suggestion_id:str}/reject",
        opt=ADMIN,
        status_code=200,
        summary="Close the suggestion; the pair is not suggested again",
        response_description="The suggestion, now `rejected`",
    )
    async def reject(
        self, suggestion_id: FromPath[str], platform: PlatformDep, principal: PrincipalDep
    ) -> dict[str, Any]:
        row = await suggestions.reject(platform, suggestion_id, principal.name)
        return suggestions.suggestion_body(row)


class MergeReviewController(Controller):
    path = "/v1/merge-reviews"
    tags = ("identity resolution",)

    @get(
        "/",
        opt=ADMIN,
        summary="Merges the guards refused, with their reason",
        description=(
            "Items `{review_id, status, reason, profile_ids, attached_to, matched_on, source, "
            "created_at, decided_at, decided_by}`. `reason.code`: `too_many_profiles` (with "
            "`profiles`, `limit`), "
            "`conflicting_external_ids` (with `sources`), `identity_cap` (with `kinds`, "
            "`limit`), `totals_too_large` (with `profiles`: their order totals together "
            "exceed the 13 digits total_spent keeps; accepting it is a 409). The record was "
            "stored in `attached_to`: the profile its own external id names, else the oldest "
            "profile it matched. "
            "`status`: open (default), accepted, rejected."
        ),
        response_description="A page of merges the guards refused",
    )
    async def list_reviews(
        self,
        platform: PlatformDep,
        status: FromQuery[str] = "open",
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        async with platform.db.read() as conn:
            rows, next_cursor = await page(
                conn,
                merge_reviews,
                status=status,
                statuses=reviews.STATUSES,
                limit=limit,
                cursor=cursor,
            )
        return {"items": [reviews.review_body(r) for r in rows], "next_cursor": next_cursor}

    @post(
        "/{review_id:str}/accept",
        opt=ADMIN,
        status_code=200,
        summary="Override the guard: merge the profiles (provenance reviewed)",
        description="409 when the review is no longer open, or while an erasure request of one "
        "of the customers is open (it erases the customer as it found them).",
        response_description=(
            "The review, now `accepted`, with the surviving `profile_id` and `merged_profile_ids`"
        ),
    )
    async def accept(
        self, review_id: FromPath[str], platform: PlatformDep, principal: PrincipalDep
    ) -> dict[str, Any]:
        row, merged = await reviews.accept(platform, review_id, principal.name)
        return _merged(reviews.review_body(row), merged)

    @post(
        "/{review_id:str}/reject",
        opt=ADMIN,
        status_code=200,
        summary="Keep the profiles apart",
        response_description="The review, now `rejected`",
    )
    async def reject(
        self, review_id: FromPath[str], platform: PlatformDep, principal: PrincipalDep
    ) -> dict[str, Any]:
        return reviews.review_body(await reviews.reject(platform, review_id, principal.name))


@post(
    "/v1/profiles/{profile_id:str}/unmerge",
    opt=ADMIN,
    status_code=200,
    tags=["identity resolution"],
    summary="Split a merged profile back along its recorded links",
    description=(
        "For a surviving profile, undoes every merge into it (newest first); for a merged-away "
        "id, undoes the merge that absorbed it. Answers `{profile_ids: [survivor, restored...], "
        "undone_merges: [...]}`. 404 unknown id, 410 erased, 409 nothing to undo (or an "
        "erasure request of the customer is still open: it erases them as it found them)."
    ),
    response_description="The resulting profiles and the merges undone",
)
async def post_unmerge(
    profile_id: FromPath[str], platform: PlatformDep, principal: PrincipalDep
) -> dict[str, Any]:
    pid = parse_uuid(profile_id)
    if pid is None:
        raise NotFound("no profile with this id")
    async with platform.db.write() as conn:
        result = await unmerge(conn, platform, pid, principal.name)
    return {
        "profile_ids": [str(x) for x in result.profile_ids],
        "undone_merges": [str(x) for x in result.merge_ids],
    }


MATCHING_ROUTES = [MatchSuggestionController, MergeReviewController, post_unmerge]
