/*
 * The analysis graph, top to bottom:
 *   tomograms + masks -> EXTRACT_PATCHES (CPU, per tomogram) -> EMBED (GPU, per tomogram)
 *   or, with params.picks, tomograms + their picks -> PREDICT_CENTERS (GPU, per tomogram)
 *   -> MERGE_EMBEDDINGS (all) -> CLUSTER_KMEANS, CLUSTER_SPECTRAL -> VISUALIZE
 *   with params.train, trained_model is first fine-tuned on the particles the run embeds (TRAIN, GPU,
 *   all tomograms: the picks' boxes with params.picks, else the masked instances) and the fine-tuned
 *   checkpoint is the one EMBED / PREDICT_CENTERS use
 *
 * Each process receives exactly the config keys its step reads (workflows/settings.nf, generated from
 * the package's Config), from params, as `--set key=value` flags (a `val` input), so `-resume` re-runs
 * only what a change touches. Files are found on the
 * head node with Nextflow's file API (file(), files(), Path.exists()), so every folder may be local,
 * s3:// or gs://; tasks get them staged.
 */

include { EXTRACT_PATCHES  } from '../modules/local/extract_patches/main'
include { EMBED            } from '../modules/local/embed/main'
include { TRAIN            } from '../modules/local/train/main'
include { PREDICT_CENTERS  } from '../modules/local/predict_centers/main'
include { MERGE_EMBEDDINGS } from '../modules/local/merge_embeddings/main'
include { VISUALIZE        } from '../modules/local/visualize/main'
include { CLUSTER as CLUSTER_KMEANS   } from '../modules/local/cluster/main'
include { CLUSTER as CLUSTER_SPECTRAL } from '../modules/local/cluster/main'
include { stepKeys; wholeNumberKeys   } from './settings'

// A nested param: its value, or `absent` when params has no such key (conf/config_params.config gives
// every config key a default except those that mean something only when given).
def paramAt(String dotted, absent) {
    return dotted.tokenize('.').inject(params) { node, key ->
        (node instanceof Map && node.containsKey(key)) ? node[key] : absent
    }
}

// The `--set` flags of a step: each key it reads (stepKeys) that params holds, as the CLI takes it (a key
// params lacks is left out: the step then uses the CLI's default), plus `extra` (staging paths).
def stepFlags(String step, Map extra = [:]) {
    def absent = new Object()
    def given = stepKeys()[step].collectEntries { key -> [key, paramAt(key, absent)] }
        .findAll { _key, value -> !value.is(absent) }
        .collectEntries { key, value -> [key, key in wholeNumberKeys() ? wholeNumber(value) : value] }
    return flags(given + extra)
}

// `--set key=value` flags for the CLI, values written as YAML (JSON is YAML), each one shell word: a
// quote inside a value (a file name with ') is closed, escaped and reopened
def flags(Map settings) {
    return settings.collect { key, value -> shellWord("${key}=${groovy.json.JsonOutput.toJson(value)}") }
        .collect { word -> "--set ${word}" }
        .join(' ')
}

def shellWord(String text) {
    return "'" + text.replace("'", "'\\''") + "'"
}

// A whole number given on the command line: from Nextflow 26.04 (strict parser) a `--key 12` whose
// default is null stays the string '12'; the schema takes digits as a string too, and the CLI gets a number.
def wholeNumber(value) {
    return (value instanceof CharSequence && value.toString().isInteger()) ? value.toString().toInteger() : value
}

def stemOf(String name, String extension) {
    return name.endsWith(extension) ? name.substring(0, name.length() - extension.length()) : name
}

// Files sort by name wherever they are collected: the task hash of MERGE and what follows depends on
// the order, and tasks finish in any order.
def byName(a, b) {
    return a.name <=> b.name
}

// A folder named by a param, which must exist (local, s3:// or gs://).
def existingFolder(String key, String location) {
    def folder = file(location)
    if (!folder.exists()) {
        error("${key} ${location} does not exist")
    }
    return folder
}

// The tomograms to process, by the one-machine run's rule (stages/tomograms.py list_tomograms): test_files
// (+ train_files), else every <data_folder>/*<file_extension> by name (+ train_files); a listed name is a
// plain file name in data_folder (core/config.py refuses a folder part), and a listed tomogram that does
// not exist is an error naming it, not a silent skip.
def tomogramsIn(String location, String extension, testFiles, trainFiles) {
    def folder = existingFolder('data_folder', location)
    def found
    if (testFiles != null) {
        found = listedIn(folder, testFiles as List, 'test_files')
    } else {
        found = files("${location}/*${extension}").findAll { f -> !f.isDirectory() && !f.name.startsWith('.') }
            .sort { f -> f.name }
        if (!found) {
            error("data_folder ${location}: no '*${extension}' tomograms found (file_extension)")
        }
    }
    found = (found + listedIn(folder, (trainFiles ?: []) as List, 'train_files')).unique { f -> f.toString() }
    def missing = found.find { f -> !f.exists() || f.isDirectory() }
    if (missing) {
        error("${missing}: tomogram listed for processing does not exist")
    }
    return found
}

// Names listed in the config (`key`), in the folder: a folder part, '.', '..' or an empty name is refused
// as the one-machine config refuses it.
def listedIn(folder, List names, String key) {
    return names.collect { name ->
        def text = name as String
        if (!text || text in ['.', '..'] || text.contains('/') || text.contains('\\')) {
            error("${key}: '${text}' must be a tomogram file name without a folder part")
        }
        folder.resolve(text)
    }
}

// The names a tomogram's instance mask may have, in the order the one-machine run tries them: the
// Groovy copy of core/layout.py mask_candidates (tests/pipeline/test_head_node.py keeps them equal).
def maskCandidates(String stem, String extension, String suffix) {
    return ["${stem}_instance_preds${suffix}.h5", "${stem}${extension}", "${stem}.mrc", "${stem}.rec"].unique()
}

// A tomogram's instance mask, where the one-machine run looks for it (core/volumes.py find_mask).
def maskOf(folder, String stem, String extension, String suffix) {
    return maskCandidates(stem, extension, suffix)
        .collect { name -> folder.resolve(name) }
        .find { candidate -> candidate.exists() }
}

// In a folder of per-tomogram picks, the tomogram's own file as the one-machine run finds it
// (core/picks.py picks_file_for): <stem>.star|csv|json, else <stem>_*.star|csv|json but never the exact
// file of another tomogram (`others`: TS_1_b.star is TS_1_b's, not TS_1's); null if none.
def picksFileFor(List candidates, String stem, String location, List others) {
    def found = candidates.findAll { f ->
        def name = withoutExtension(f.name)
        name == stem || (f.name.startsWith("${stem}_") && !(name in others))
    }
    def exact = found.findAll { f -> withoutExtension(f.name) == stem }
    if (exact) {
        found = exact
    }
    if (found.size() > 1) {
        error("picks ${location}: several picks files for ${stem}: ${found.collect { f -> f.name }.join(', ')}")
    }
    return found ? found[0] : null
}

def withoutExtension(String name) {
    return name.substring(0, name.lastIndexOf('.'))
}

def picksFilesIn(location) {
    return files("${location}/*").findAll { f -> !f.isDirectory() && f.name.toLowerCase() ==~ /.+\.(star|csv|json)/ }
}

workflow SUBTOMO_EMBED {
    main:
    def extension = params.file_extension
    def suffix = params.instances
        ? "_min-${params.instances.min_center_distance}_max-${params.instances.max_center_distance}" : ''
    def kmeansVisualization = params.clustering_kmeans.visualization
    def spectralVisualization = params.clustering_spectral.visualization

    def startingCheckpoint = file(params.trained_model, checkIfExists: true)
    def tomograms = tomogramsIn(params.data_folder, extension, params.test_files, params.train_files)
    def maskFolder = params.instances_mask_folder
        ? existingFolder('instances_mask_folder', params.instances_mask_folder) : null
    // [stem, tomogram, mask or null] per tomogram, found on the head node
    def masked = tomograms.collect { tomogram ->
        def stem = stemOf(tomogram.name, extension)
        [stem, tomogram, maskFolder ? maskOf(maskFolder, stem, extension, suffix) : null]
    }

    // with params.picks: each tomogram with its own picks, found on the head node: one file for all
    // tomograms (passed whole; a task keeps its tomogram's rows and makes no outputs when there are
    // none), or a folder of per-tomogram files (paired here, so adding a file reruns only its tomogram)
    def picked = []
    def picksFile = null
    if (params.picks) {
        picksFile = file(params.picks, checkIfExists: true)
        def candidates = picksFile.isDirectory() ? picksFilesIn(params.picks) : []
        if (picksFile.isDirectory() && !candidates) {
            error("picks ${params.picks}: no .star, .csv or .json picks files in the folder")
        }
        def stems = masked.collect { item -> item[0] }
        picked = masked.collect { item ->
            def others = stems.findAll { other -> other != item[0] }
            [item[0], item[1], picksFile.isDirectory() ? picksFileFor(candidates, item[0], params.picks, others) : picksFile]
        }
        picked.findAll { item -> item[2] == null }.each { item ->
            log.warn("${item[0]}: no picks file in ${params.picks}; skipped")
        }
        picked = picked.findAll { item -> item[2] != null }
        if (!picked) {
            error("picks ${params.picks}: no picks file for any tomogram in ${params.data_folder}")
        }
    }

    // with params.train: fine-tune the checkpoint on the particles the run embeds (the picks' boxes with
    // params.picks, else every tomogram's instance mask and its regions table, as predict reads them),
    // then embed with the fine-tuned one
    def checkpoint = startingCheckpoint
    ch_train_versions = channel.empty()
    if (params.train) {
        def trainTomograms
        def trainMasks = []
        def trainPicks = []
        def trainFlags
        if (params.picks) {
            // a folder is staged as picks/ with only the paired files; one file as picks/<name>
            trainTomograms = picked.collect { item -> item[1] }
            trainPicks = picked.collect { item -> item[2] }.unique()
            def target = picksFile.isDirectory() ? 'picks' : "picks/${picksFile.name}"
            trainFlags = stepFlags('train', [instances_mask_folder: null, centers_file: target])
        } else {
            def trainable = masked.findAll { item -> item[2] != null }
            if (!trainable) {
                error("train: fine-tuning needs instance masks or picks; none in ${params.instances_mask_folder}")
            }
            def regionsTables = trainable
                .collect { item -> maskFolder.resolve("${item[0]}_instance_regions${suffix}.csv") }
                .findAll { f -> f.exists() }
            trainTomograms = trainable.collect { item -> item[1] }
            trainMasks = trainable.collect { item -> item[2] } + regionsTables
            trainFlags = stepFlags('train', [instances_mask_folder: 'masks'])
        }
        TRAIN(trainTomograms, trainMasks, trainPicks, startingCheckpoint, trainFlags)
        checkpoint = TRAIN.out.checkpoint  // a value channel: TRAIN runs once, on values
        ch_train_versions = TRAIN.out.versions
    }

    if (params.picks) {
        ch_picked = channel.fromList(picked).map { stem, tomogram, picks -> [[id: stem], tomogram, picks] }
        PREDICT_CENTERS(ch_picked, checkpoint, stepFlags('predict_centers'))
        ch_embedded = PREDICT_CENTERS.out
        ch_embed_versions = PREDICT_CENTERS.out.versions
        ch_data = ch_picked.map { _meta, tomogram, _picks -> tomogram }
        ch_masks = channel.fromList(masked.findAll { item -> item[2] != null }.collect { item -> item[2] })
    } else {
        def missing = masked.findAll { item -> item[2] == null }.collect { item -> item[0] }
        if (missing && !params.skip_missing_masks) {
            def expected = maskCandidates(missing[0], extension, suffix).join(', ')
            def folder = params.instances_mask_folder
            error("${missing[0]}: no instance mask in ${folder} (expected one of ${expected}); skip_missing_masks skips it")
        }
        // one (meta, tomogram, mask, regions table or []) per tomogram that has a mask
        ch_inputs = channel.fromList(masked)
            .filter { stem, _tomogram, mask ->
                if (mask == null) {
                    log.warn("${stem}: no instance mask in ${params.instances_mask_folder}; skipped")
                }
                mask != null
            }
            .map { stem, tomogram, mask ->
                def regions = maskFolder.resolve("${stem}_instance_regions${suffix}.csv")
                [[id: stem], tomogram, mask, regions.exists() ? regions : []]
            }
        EXTRACT_PATCHES(ch_inputs, stepFlags('extract'))
        EMBED(EXTRACT_PATCHES.out.patches, checkpoint, stepFlags('embed'))
        ch_embedded = EMBED.out
        ch_embed_versions = EXTRACT_PATCHES.out.versions.mix(EMBED.out.versions)
        ch_data = ch_inputs.map { _meta, tomogram, _mask, _regions -> tomogram }
        ch_masks = ch_inputs.map { _meta, _tomogram, mask, _regions -> mask }
    }

    ch_per_tomogram = ch_embedded.embeddings
        .mix(ch_embedded.labels, ch_embedded.regions)
        .map { _meta, f -> f }
        .collect(sort: { a, b -> byName(a, b) })
        .ifEmpty { error("no tomogram yielded embeddings (no instances or picks passed the filters); nothing to merge") }
    // each tomogram's regions STAR: the clustered STAR files are its rows plus rlnClass
    ch_stars = ch_embedded.star.map { _meta, f -> f }.collect(sort: { a, b -> byName(a, b) })
    // the tomograms (cluster galleries) and masks (cluster label volumes) of the embedded instances,
    // staged as data/ and masks/ as the one-machine run reads data_folder and instances_mask_folder
    ch_data_all = ch_data.collect(sort: { a, b -> byName(a, b) })
    ch_masks_all = ch_masks.collect(sort: { a, b -> byName(a, b) }).ifEmpty([])
    MERGE_EMBEDDINGS(ch_per_tomogram, stepFlags('merge'))

    CLUSTER_KMEANS('kmeans', MERGE_EMBEDDINGS.out.merged, ch_stars,
                   kmeansVisualization ? ch_data_all : channel.value([]), ch_masks_all, stepFlags('kmeans'))
    CLUSTER_SPECTRAL('spectral', MERGE_EMBEDDINGS.out.merged, ch_stars,
                     spectralVisualization ? ch_data_all : channel.value([]), ch_masks_all, stepFlags('spectral'))
    // the projections are coloured by both clusterings, as after `kmeans` and `spectral` on one machine
    ch_clusters = CLUSTER_KMEANS.out.clusters
        .mix(CLUSTER_SPECTRAL.out.clusters)
        .collect(sort: { a, b -> byName(a, b) })
    VISUALIZE(MERGE_EMBEDDINGS.out.merged, ch_clusters, ch_stars, ch_data_all, ch_masks_all, stepFlags('visualize'))

    ch_versions = ch_embed_versions
        .mix(ch_train_versions, MERGE_EMBEDDINGS.out.versions, CLUSTER_KMEANS.out.versions,
             CLUSTER_SPECTRAL.out.versions, VISUALIZE.out.versions)

    emit:
    embeddings = MERGE_EMBEDDINGS.out.merged
    versions   = ch_versions
}
