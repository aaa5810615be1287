// AudioWorklet side of the comostream page: microphone blocks out, converted audio in.
// The render thread only copies samples: input frames are gathered into blocks of `block`
// samples and posted to the page; converted samples posted back go into a ring that the
// output plays once `prefill` samples are queued. Underruns play silence and are counted;
// a ring holding more than `maxQueued` samples skips its oldest (latency never creeps).

class ComostreamProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions;
    this.block = opts.block;
    this.prefill = opts.prefill;
    this.maxQueued = opts.maxQueued;
    this.pending = new Float32Array(this.block);
    this.pendingFill = 0;
    this.ring = new Float32Array(Math.max(4 * this.maxQueued, sampleRate));
    this.readPos = 0;
    this.writePos = 0;
    this.playing = false;
    this.underruns = 0;
    this.skipped = 0;
    this.port.onmessage = (e) => this.enqueue(e.data);
  }

  queued() {
    return this.writePos - this.readPos;
  }

  enqueue(samples) {
    const n = this.ring.length;
    for (let i = 0; i < samples.length; i++) this.ring[(this.writePos + i) % n] = samples[i];
    this.writePos += samples.length;
    const excess = this.queued() - this.maxQueued;
    if (excess > 0) {
      this.readPos += excess;
      this.skipped += excess;
    }
    if (!this.playing && this.queued() >= this.prefill) this.playing = true;
  }

  process(inputs, outputs) {
    const input = inputs[0] && inputs[0][0];
    const frames = outputs[0][0].length;
    for (let i = 0; i < frames; i++) {
      this.pending[this.pendingFill++] = input ? input[i] : 0;
      if (this.pendingFill === this.block) {
        this.port.postMessage(this.pending.slice(0));
        this.pendingFill = 0;
      }
    }
    const out = outputs[0];
    const n = this.ring.length;
    for (let i = 0; i < frames; i++) {
      let v = 0;
      if (this.playing && this.queued() > 0) {
        v = this.ring[this.readPos % n];
        this.readPos++;
      } else if (this.playing) {
        this.underruns++;
      }
      for (let c = 0; c < out.length; c++) out[c][i] = v;
    }
    return true;
  }
}

registerProcessor("comostream-processor", ComostreamProcessor);
