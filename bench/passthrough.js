// P1's baseline: a worker in the same runtime that forwards every request to the same origin, checking
// nothing. What keygate adds is the difference between the two.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    return fetch(env.ORIGIN_URL + url.pathname + url.search, request);
  },
};
